# make demo | make test | make bench | make soak — each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := .demo
DEMO_MODEL := $(DEMO)/SmolLM2-135M-Instruct
DEMO_SGT := $(DEMO)/sgt_model.pt
export HF_HUB_OFFLINE := 1

.PHONY: venv demo demo-assets test lint bench soak clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-demo.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-demo.txt
	touch $@

venv: $(VENV)/.installed

$(DEMO_MODEL)/config.json: | venv
	$(PY) -m proxy.sgt export-model --out $(DEMO_MODEL)

DEMO_WEIGHTS := sgt_weights/smollm2-135m-instruct.pt

$(DEMO_SGT): $(DEMO_MODEL)/config.json $(DEMO_WEIGHTS)
	$(PY) -m proxy.sgt assemble --model $(DEMO_MODEL) --weights $(DEMO_WEIGHTS) --out $(DEMO_SGT)

demo-assets: $(DEMO_SGT)

demo: venv demo-assets
	PY=$(PY) DEMO_MODEL=$(DEMO_MODEL) DEMO_SGT=$(DEMO_SGT) scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest -q

bench: venv
	$(PY) -m bench

soak: venv
	$(PY) -m bench.soak

clean:
	rm -rf $(DEMO) .bench
