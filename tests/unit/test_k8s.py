"""deploy/k8s validates offline and agrees with the code.

Every built-in resource is validated against the strict OpenAPI-derived JSON schemas that the
kubernetes-validate package bundles (unknown fields are errors), for the oldest Kubernetes minor we
support and the newest the package knows. The RayCluster, a KubeRay custom resource, is validated
against tests/unit/schemas/raycluster-ray.io-v1.json: its own fields from KubeRay's v1 API types, and
the embedded Kubernetes types (PodTemplateSpec, ...) from the same strict bundled schemas. Prefect's
base job template is rendered with its defaults by prefect-kubernetes' own job configuration model (as the
worker renders it for a flow run) and validated as the batch/v1 Job it becomes.

The rest checks names across files: settings against Settings, probes against the API's routes, the
Ray head's service against STREAMFLOW_RAY_ADDRESS, Secret and ConfigMap references against what exists.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
import uuid
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from packaging.requirements import Requirement

from streamflow.settings import Settings
from tests.unit.test_compose import (
    PLANNED_SETTINGS,
    _leaf_command,
    _subcommands,
    api_liveness_and_readiness_routes,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RAYCLUSTER_SCHEMA = Path(__file__).resolve().parent / "schemas" / "raycluster-ray.io-v1.json"
API_PORT = Settings.model_fields["api_port"].default
OLDEST_K8S = "1.30"  # HorizontalPodAutoscaler v2, PodDisruptionBudget v1, RBAC v1 are all GA well before
K8S_VERSIONS = sorted(
    {OLDEST_K8S, kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())}
)
PLACEHOLDER = "change-me"


# --------------------------------------------------------------------------- readers


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, resource) of every document under deploy/k8s but the kustomization."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return tuple(found)


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def one(kind: str, name: str) -> dict[str, Any]:
    return resources(kind)[name]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def job_template() -> dict[str, Any]:
    return json.loads(one("ConfigMap", "streamflow-prefect-job-template")["data"]["base-job-template.json"])


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod the manifests define, the flow-run Job's included."""
    specs = []
    for _, doc in manifests():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "RayCluster":
            specs.append((f"{where} head", doc["spec"]["headGroupSpec"]["template"]["spec"]))
            for group in doc["spec"]["workerGroupSpecs"]:
                specs.append((f"{where} {group['groupName']}", group["template"]["spec"]))
        elif "template" in doc.get("spec", {}):
            specs.append((where, doc["spec"]["template"]["spec"]))
    specs.append(("prefect flow-run Job", rendered_job_manifest()["spec"]["template"]["spec"]))
    return specs


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@cache
def _rendered_job_manifest() -> str:
    """The Job a flow run gets, rendered by Prefect's own Kubernetes worker model from the template's
    defaults (the worker's code path, without a server: no block or variable to resolve)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = job_template()
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    configuration = KubernetesWorkerJobConfiguration(**apply_values(template["job_configuration"], defaults))
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="streamflow-test-run"))
    return json.dumps(configuration.job_manifest)


def rendered_job_manifest() -> dict[str, Any]:
    return json.loads(_rendered_job_manifest())


# --------------------------------------------------------------------------- schema validation


def _k8s_definitions(version: str) -> referencing.Resource:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    matches = sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(f"v{version}.") and p.name.endswith("-local-strict")
    )
    assert matches, f"kubernetes-validate has no strict schemas for {version}"
    return referencing.Resource.from_contents(
        json.loads((folder / matches[-1] / "_definitions.json").read_text())
    )


def validate_custom_resource(doc: dict[str, Any], version: str) -> None:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    registry = referencing.Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json", _k8s_definitions(version)
    )
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


def validate(doc: dict[str, Any], version: str) -> None:
    if doc["apiVersion"] == "ray.io/v1":
        validate_custom_resource(doc, version)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc",
    [pytest.param(doc, id=f"{file}:{doc['kind']}/{doc['metadata']['name']}") for file, doc in manifests()],
)
def test_manifest_is_valid(doc: dict[str, Any], version: str) -> None:
    try:
        validate(doc, version)
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
        pytest.fail(f"{'.'.join(map(str, exc.path))}: {exc.message}")
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_prefect_job_template_renders_a_valid_job(version: str) -> None:
    template = job_template()
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= declared, f"undeclared variables: {sorted(used - declared)}"
    job = rendered_job_manifest()
    pod = job["spec"]["template"]["spec"]
    # Prefect's worker insists on these two under the pod spec (as in its default template); Kubernetes
    # ignores them there. Everything else must be a valid Job.
    assert (pod.pop("completions"), pod.pop("parallelism")) == (1, 1)
    kubernetes_validate.validate(job, version, strict=True)
    (container,) = pod["containers"]
    assert container["image"] == template["variables"]["properties"]["image"]["default"]
    assert container["args"][:2] == ["prefect", "flow-run"], "Prefect's command starts the flow run"


def test_the_validators_reject_what_they_should() -> None:
    """An unknown field, a wrong type: the validation above is not a formality."""
    api = json.loads(json.dumps(one("Deployment", "streamflow-api")))
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSIONS[-1], strict=True)
    ray = json.loads(json.dumps(one("RayCluster", "streamflow-ray")))
    ray["spec"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        validate_custom_resource(ray, K8S_VERSIONS[-1])
    ray = json.loads(json.dumps(one("RayCluster", "streamflow-ray")))
    ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "6379"
    with pytest.raises(jsonschema.ValidationError, match="6379"):
        validate_custom_resource(ray, K8S_VERSIONS[-1])


def test_kustomization_lists_every_manifest() -> None:
    k = kustomization()
    assert k["kind"] == "Kustomization" and k["namespace"] == "streamflow"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(files)
    assert resources("Namespace").keys() == {k["namespace"]}
    for _, doc in manifests():
        assert "namespace" not in doc["metadata"], "the kustomization sets the namespace"
    images = {image for _, spec in pod_specs() for c in containers(spec) for image in [c["image"]]}
    ours = {image.split(":")[0] for image in images if image.startswith("streamflow")}
    assert ours == {entry["name"] for entry in k["images"]} == {"streamflow", "streamflow-ray"}


# --------------------------------------------------------------------------- names across files


def test_settings_are_settings_fields() -> None:
    names = set(one("ConfigMap", "streamflow-config")["data"]) | set(
        one("Secret", "streamflow-secrets")["stringData"]
    )
    used = {n for n in names if n.startswith("STREAMFLOW_")} - PLANNED_SETTINGS
    unknown = sorted(n for n in used if n.removeprefix("STREAMFLOW_").lower() not in Settings.model_fields)
    assert not unknown, f"not fields of streamflow.settings.Settings: {unknown}"
    config = one("ConfigMap", "streamflow-config")["data"]
    assert config["STREAMFLOW_ENGINE"] == "ray" and config["STREAMFLOW_ONLINE_STORE"] == "redis"
    for name in ("STREAMFLOW_LAKE_URI", "STREAMFLOW_ARTIFACTS_URI"):
        assert config[name].startswith("s3://"), name
    Settings(artifacts_uri=config["STREAMFLOW_ARTIFACTS_URI"])  # accepted by its validator


def test_secret_holds_placeholders_only() -> None:
    secret = one("Secret", "streamflow-secrets")
    assert "data" not in secret, "stringData placeholders, never base64 values"
    for key, value in secret["stringData"].items():
        if "://" in value:
            parts = urlsplit(value)
            assert parts.password in (None, PLACEHOLDER), f"{key}: a real password in a URL"
        else:
            assert value == PLACEHOLDER, f"{key}: placeholders only"
    # The Redis server's password is the one in the clients' URL.
    redis_url = urlsplit(secret["stringData"]["STREAMFLOW_REDIS_URL"])
    assert redis_url.password == secret["stringData"]["REDIS_PASSWORD"]


def test_references_resolve() -> None:
    """Every ConfigMap, Secret (and key), ServiceAccount and claim a pod names exists."""
    config_maps, secrets = resources("ConfigMap"), resources("Secret")
    accounts, claims = resources("ServiceAccount"), resources("PersistentVolumeClaim")
    for where, spec in pod_specs():
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in accounts, f"{where}: {spec['serviceAccountName']}"
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, where
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
        for container in containers(spec):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for env in container.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in secrets[ref["name"]]["stringData"], f"{where}: {ref}"
    binding = one("RoleBinding", "streamflow-prefect-worker")
    assert binding["roleRef"]["name"] in resources("Role")
    assert all(s["name"] in accounts for s in binding["subjects"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_api_deployment_service_and_autoscaler() -> None:
    deployment, service = one("Deployment", "streamflow-api"), one("Service", "streamflow-api")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # The command is a real CLI command with options it accepts, on the API's port.
    args = container["command"]
    assert args[0] == "streamflow"
    command, path, rest = _leaf_command(args[1:])
    assert path == ["serve"] and _subcommands(command) is None
    command.make_context("streamflow serve", list(rest))
    assert rest[rest.index("--port") + 1] == str(API_PORT) and rest[rest.index("--host") + 1] == "0.0.0.0"
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": API_PORT}
    # Readiness on /ready, liveness (and start-up) on /health: the API's own routes.
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert api_liveness_and_readiness_routes() == {"/health", "/ready"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(API_PORT)
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert _selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The autoscaler owns the replica count, scales on CPU (which needs a request) and keeps two.
    hpa = one("HorizontalPodAutoscaler", "streamflow-api")
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "streamflow-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert container["resources"]["requests"]["cpu"]
    pdb = one("PodDisruptionBudget", "streamflow-api")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user


def test_redis_is_what_the_clients_connect_to() -> None:
    statefulset, service = one("StatefulSet", "streamflow-redis"), one("Service", "streamflow-redis")
    pod = statefulset["spec"]["template"]
    assert statefulset["spec"]["serviceName"] == "streamflow-redis"
    assert _selects(service["spec"]["selector"], pod["metadata"]["labels"])
    url = urlsplit(one("Secret", "streamflow-secrets")["stringData"]["STREAMFLOW_REDIS_URL"])
    (container,) = pod["spec"]["containers"]
    assert (url.hostname, url.port) == ("streamflow-redis", container["ports"][0]["containerPort"])
    assert service["spec"]["ports"][0]["port"] == url.port
    assert container["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert container["env"][0]["name"] == "REDIS_PASSWORD", "defined before $(REDIS_PASSWORD) uses it"
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in container["volumeMounts"]
    }


def test_ray_cluster_is_where_the_drivers_connect() -> None:
    cluster = one("RayCluster", "streamflow-ray")
    head = cluster["spec"]["headGroupSpec"]
    address = urlsplit(one("ConfigMap", "streamflow-config")["data"]["STREAMFLOW_RAY_ADDRESS"])
    # KubeRay names the head's service <cluster>-head-svc; Ray Client listens on the head's port 10001.
    assert address.scheme == "ray" and address.hostname == f"{cluster['metadata']['name']}-head-svc"
    (head_container,) = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports["client"] == address.port == 10001 and ports["gcs"] == 6379
    assert head["rayStartParams"]["num-cpus"] == "0"
    # The Ray in the image: within the bounds of pyproject.toml's `ray` extra.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (ray,) = [Requirement(r) for r in extras["ray"] if Requirement(r).name == "ray"]
    assert {"default", "data"} <= ray.extras
    assert ray.specifier.contains(cluster["spec"]["rayVersion"]), (
        cluster["spec"]["rayVersion"],
        str(ray.specifier),
    )
    groups = cluster["spec"]["workerGroupSpecs"]
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    # Every Ray node and every driver (the flow-run Jobs) runs the same image with the ray extra.
    ray_images = {c["image"] for c in head["template"]["spec"]["containers"]}
    ray_images |= {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    ray_images.add(job_template()["variables"]["properties"]["image"]["default"])
    assert len(ray_images) == 1 and next(iter(ray_images)).startswith("streamflow-ray:")
    for where, spec in pod_specs():
        if "RayCluster" in where:
            mounts = {m["mountPath"]: m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where


def test_prefect_worker_serves_the_kubernetes_pool() -> None:
    deployment = one("Deployment", "streamflow-prefect-worker")
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    (worker,) = spec["containers"]
    create = init["command"]
    assert (
        create[:3] == ["prefect", "work-pool", "create"]
        and create[create.index("--type") + 1] == "kubernetes"
    )
    pool = create[3]
    assert worker["command"][:3] == ["prefect", "worker", "start"]
    assert worker["command"][worker["command"].index("--pool") + 1] == pool
    assert worker["command"][worker["command"].index("--type") + 1] == "kubernetes"
    # The template the pool is created with is the ConfigMap's, mounted where the command reads it.
    template_path = Path(create[create.index("--base-job-template") + 1])
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    volume = {v["name"]: v for v in spec["volumes"]}[mounts[str(template_path.parent)]]
    assert template_path.name in one("ConfigMap", volume["configMap"]["name"])["data"]
    assert "--with-healthcheck" in worker["command"]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {"health": 8080}
    # Flow-run Jobs get StreamFlow's settings and the identity without API access.
    job_spec = rendered_job_manifest()["spec"]["template"]["spec"]
    assert job_spec["serviceAccountName"] == "streamflow-flow-run"
    assert one("ServiceAccount", "streamflow-flow-run")["automountServiceAccountToken"] is False
    assert {next(iter(s.values()))["name"] for s in job_spec["containers"][0]["envFrom"]} == {
        "streamflow-config",
        "streamflow-secrets",
    }
