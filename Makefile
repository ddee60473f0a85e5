# `make demo`: the workflow on the bundled synthetic demo set. `make test`: the test suite.
# Both create .venv from requirements.lock (every package pinned and hashed) when it is missing or out of date.
# `make lock`: the locks (requirements.lock, envs/locked/) anew from requirements.txt and envs/*.yaml.
PYTHON ?= python3
VENV := .venv
CORES ?= $(shell nproc)
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: demo test test-quick lint lock mutation config-readme venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock requirements.txt pyproject.toml
	# The lock must have been made from requirements.txt as it is (else: make lock); standard library only.
	PYTHONPATH=workflow_scripts $(PYTHON) -m hpaflow.locks check requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --require-hashes -r requirements.lock
	# hpaflow is not installed: each clone's tests (pytest.ini pythonpath), benchmarks and jobs import
	# that clone's workflow_scripts/, so one venv serves several clones (an old editable install goes).
	$(VENV)/bin/python -m pip uninstall -q -y hpaflow 2>/dev/null || true
	$(VENV)/bin/python -c "import torch, torchvision, snakemake, h5py, hdf5plugin, cv2, iterstrat, imagecodecs, snakefmt"
	touch $@

demo: venv
	$(SNAKEMAKE) demo_data --cores $(CORES)
	$(SNAKEMAKE) --cores $(CORES)
	$(SNAKEMAKE) --report results/report.html
	@PYTHONPATH=workflow_scripts $(VENV)/bin/python -c "from hpaflow.summary import headline; print(headline('results/metrics.json'))"
	@test ! -f results/transfer/metrics.json || PYTHONPATH=workflow_scripts $(VENV)/bin/python -c "from hpaflow.summary import transfer_headline; print(transfer_headline('results/transfer/metrics.json'))"

test: venv
	$(VENV)/bin/python -m pytest -q tests

test-quick: venv  # everything but the full demo run
	$(VENV)/bin/python -m pytest -q tests -m "not slow"

# Needs only uv and PyYAML (pinned in requirements.txt), so it works while the venv's lock is stale.
lock:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $$(grep -E '^(uv|PyYAML)==' requirements.txt | cut -d' ' -f1)
	PYTHONPATH=workflow_scripts $(VENV)/bin/python -m hpaflow.locks write --uv $(VENV)/bin/uv

mutation: venv  # mutation testing of the modules whose maths decides the results (not in CI: see docs/development.md)
	$(VENV)/bin/python tests/mutation.py

lint: venv  # style settings (one line length) in pyproject.toml
	$(SNAKEMAKE) --lint
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

config-readme: venv  # config/README.md from the schema (tests/unit/test_config.py checks they agree)
	cd workflow_scripts && ../$(VENV)/bin/python -m hpaflow.config ../config/schemas/config.schema.yaml > ../config/README.md

clean:
	rm -rf results logs .snakemake
