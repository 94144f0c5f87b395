# syntax=docker/dockerfile:1
# Stained Glass Transform Proxy: gunicorn on :8600, as a non-root user (uid 10001).
#
#   CPU (default):  docker build -t sgt-proxy .            (or: make image)
#   CUDA:           docker build --build-arg TORCH_VARIANT=cu128 -t sgt-proxy:cuda .
#   Offline:        make wheelhouse && make image IMAGE_BUILD_ARGS="--build-arg WHEELHOUSE=wheelhouse"
#
# Every runtime package comes from requirements.lock, each file checked against its sha256
# (pip --require-hashes), transitive dependencies included.
#
# BASE_IMAGE: any Debian-like image with python3.11 (as `python`), venv and pip, e.g. the default, or a
#   local one made with debootstrap (tests/test_image.py does that). Both stages use it.
# WHEELHOUSE: a folder of the build context holding every wheel of the lock (`make wheelhouse`): the
#   packages are installed from it alone (--no-index), so the build needs no network. Empty: PyPI, and
#   torch's CPU wheel from the PyTorch index.
# TORCH_VARIANT picks the PyTorch wheel index (https://download.pytorch.org/whl/<variant>):
#   "cpu" (torch 2.13.0+cpu, hashed in the lock) or a CUDA variant such as "cu128" (the host needs the
#   NVIDIA driver and container toolkit: `docker run --gpus all ... -e SGP_DEVICE=cuda`). A CUDA torch and
#   its CUDA wheels are pinned by version but not hashed (the lock holds the CPU build); the rest of the
#   lock still is.
# The SGT file is not in the image: mount it at /models/sgt_model.pt (SGP_SGT_PATH).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with every runtime dependency ----
FROM ${BASE_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG WHEELHOUSE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock /tmp/requirements.lock
# The context is mounted (not copied) so that a wheelhouse is read, never kept in a layer. Behind a
# TLS-inspecting proxy, pass the machine's CA bundle as the build secret "ca_bundle" (make image
# CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt): pip trusts it for this step, and it is not kept.
RUN --mount=type=bind,target=/context \
    --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    if [ -n "${WHEELHOUSE}" ]; then \
        pip install --use-pep517 --no-index --find-links "/context/${WHEELHOUSE}" --require-hashes -r /tmp/requirements.lock; \
    elif [ "${TORCH_VARIANT}" = cpu ]; then \
        pip install --use-pep517 --extra-index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" --require-hashes \
            -r /tmp/requirements.lock; \
    else \
        awk '/^torch==/ {skip = 1} skip {if (!/\\$/) skip = 0; next} {print}' /tmp/requirements.lock \
            > /tmp/requirements-without-torch.lock \
        && pip install --use-pep517 --require-hashes --no-deps -r /tmp/requirements-without-torch.lock \
        && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}"; \
    fi

# ---- runtime: the venv, the proxy's code, a non-root user ----
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="Stained Glass Transform Proxy" \
      org.opencontainers.image.description="OpenAI-compatible proxy that sends only SGT-obfuscated prompt embeddings to vLLM"
RUN groupadd --system --gid 10001 sgp \
    && useradd --system --uid 10001 --gid sgp --no-create-home --home-dir /tmp --shell /usr/sbin/nologin sgp \
    && mkdir -p /models \
    && chown sgp:sgp /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY proxy/ /app/proxy/
COPY sgop/ /app/sgop/
COPY wsgi.py gunicorn.conf.py logging.yaml logging-json.yaml /app/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_RUNTIME_DIR=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    SGP_SGT_PATH=/models/sgt_model.pt \
    SGP_DEVICE=cpu \
    SGP_LOGGING_CONFIG_FILE=/app/logging.yaml \
    GUNICORN_BIND=0.0.0.0:8600
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8600
# /metrics, when SGP_METRICS_PORT=9600 (as the k8s manifests set it)
EXPOSE 9600
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8600/livez', timeout=4).status != 200)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
