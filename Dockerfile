# syntax=docker/dockerfile:1
# Stained Glass Transform Proxy: gunicorn on :8600, as a non-root user.
#
#   CPU (default):  docker build -t sgt-proxy .
#   CUDA:           docker build --build-arg TORCH_VARIANT=cu128 -t sgt-proxy:cuda .
#
# TORCH_VARIANT picks the PyTorch wheel index (https://download.pytorch.org/whl/<variant>):
# "cpu" (torch 2.13.0+cpu, no CUDA libraries) or a CUDA variant such as "cu128" (CUDA
# runtime wheels included; the host needs the NVIDIA driver and container toolkit:
# `docker run --gpus all ... -e SGP_DEVICE=cuda`).
# The SGT file is not in the image: mount it at /models/sgt_model.pt (SGP_SGT_PATH).

ARG PYTHON_VERSION=3.11

# ---- build: a virtual environment with every runtime dependency ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
# torch first, from the PyTorch index of the chosen variant; then the rest from PyPI
# (requirements.txt pins torch==2.13.0, which the +cpu / +cuXXX build already satisfies).
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements.txt

# ---- runtime: the venv, the proxy's code, a non-root user ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
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
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8600/livez', timeout=4).status != 200)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
