"""Create the S3 buckets StreamFlow's settings name, if missing (compose.yaml: the s3-buckets job).

The buckets are those of STREAMFLOW_ARTIFACTS_URI and STREAMFLOW_LAKE_URI that are s3:// URIs, plus
any bucket names given as arguments. boto3 finds the endpoint and credentials as MLflow and pyarrow do
(AWS_ENDPOINT_URL_S3 or MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). Idempotent:
an existing bucket is left as it is. Waits up to --wait seconds for the endpoint to answer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SETTINGS_URIS = ("STREAMFLOW_ARTIFACTS_URI", "STREAMFLOW_LAKE_URI")


def wanted_buckets(extra: list[str], environ: dict[str, str]) -> list[str]:
    names = list(extra)
    for variable in SETTINGS_URIS:
        uri = environ.get(variable, "")
        if uri.lower().startswith("s3://"):
            names.append(uri[len("s3://") :].split("/", 1)[0])
    return sorted(set(filter(None, names)))


def client(environ: dict[str, str]):
    import boto3
    from botocore.config import Config

    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def ensure(buckets: list[str], environ: dict[str, str], wait_s: float) -> list[str]:
    """Create the missing buckets; return those created."""
    import botocore.exceptions as bce

    s3 = client(environ)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"S3 endpoint {s3.meta.endpoint_url} did not answer: {exc}") from None
            time.sleep(1)
    created = []
    for name in buckets:
        if name in existing:
            continue
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            continue
        created.append(name)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("buckets", nargs="*", help="more bucket names")
    parser.add_argument("--wait", type=float, default=60, help="seconds to wait for the endpoint")
    args = parser.parse_args(argv)
    buckets = wanted_buckets(args.buckets, dict(os.environ))
    if not buckets:
        print("no s3:// bucket to create", file=sys.stderr)
        return 0
    created = ensure(buckets, dict(os.environ), args.wait)
    for name in buckets:
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
