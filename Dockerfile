# syntax=docker/dockerfile:1
#
# StreamFlow's one image. The API is the default command; compose.yaml runs the same image as the
# MLflow UI, the Prefect worker and one-shot CLI jobs (`streamflow features apply`, ...).
#
#   docker build -t streamflow .
#   docker build -t streamflow:ray --build-arg EXTRAS=ray .   # with the package's `ray` extra (Ray head,
#                                                             # workers and the drivers that use them)
#   docker run --rm -p 8000:8000 -e STREAMFLOW_DATABASE_URL=postgresql://... streamflow

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Which lock to install: requirements/base.lock, or with EXTRAS=ray requirements/ray.lock (the
# package's `ray` extra, for the Ray head, workers and the drivers that use them). The locks pin every
# package with its hashes for Python 3.11 on Linux x86_64 (make lock): the image gets exactly the
# versions CI tested. A lock that does not exist fails the build.
ARG EXTRAS=""

# Dependencies first, from the lock alone: this layer (about 1.2 GB, minutes to install) is rebuilt
# only when the lock changes, not on every code change. Every dependency ships manylinux wheels, so
# the slim image needs no compiler.
COPY requirements/ ./requirements/
RUN lock="requirements/${EXTRAS:-base}.lock" \
 && { test -f "$lock" || { echo "no lock $lock for EXTRAS=$EXTRAS (known: base, ray)"; exit 1; }; } \
 && pip install --require-hashes --no-deps -r "$lock" \
 && cp "$lock" /opt/venv/streamflow.lock

# Then the package itself, as a regular (not editable) install with the locked setuptools: the runtime
# image holds no source tree, and nothing unlocked is fetched.
COPY pyproject.toml ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . \
 && pip check

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

# STREAMFLOW_STATE_DIR: Feast's generated feature_store.yaml, MLflow artifacts and reports. compose.yaml
# mounts one named volume there in every StreamFlow container, because MLflow records artifact
# locations as file:// paths that the trainer, the API and the MLflow UI must all resolve alike.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMFLOW_STATE_DIR=/data/streamflow

# A fixed numeric uid, so that orchestrators can verify "not root" and volumes get stable owners.
# (Running as root would also stop the embedded PostgreSQL, used when no STREAMFLOW_DATABASE_URL is set:
# PostgreSQL refuses to run as root.) The state folder is created here, owned by that user, because
# Docker initialises an empty named volume with the ownership of the folder it is mounted on.
RUN groupadd --system --gid 10001 streamflow \
 && useradd --system --uid 10001 --gid streamflow --create-home --home-dir /home/streamflow streamflow \
 && mkdir -p /data/streamflow \
 && chown streamflow:streamflow /data/streamflow

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
# No .env here: Settings reads ./.env, and configuration comes from the environment (compose.yaml).
WORKDIR /home/streamflow

# 8000: the API; 5000: the MLflow UI (`streamflow mlflow-ui`).
EXPOSE 8000 5000
# No HEALTHCHECK: the image plays several roles (API, MLflow UI, worker, one-shot jobs), so each
# service declares its own in compose.yaml.
CMD ["streamflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
