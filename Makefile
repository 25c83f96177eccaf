# The two commands of the README: `make demo` and `make test`. Both set up .venv first
# (python -m venv + pip install -e ".[dev]"), once; later calls skip straight to the job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bench-installed

.PHONY: setup demo smear-demo test test-fast cluster-test clean-results

setup: $(STAMP)

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

# The main job on the embedded synthetic dataset: a 4-model sweep at 64 px on the CPU,
# the leaderboard (results/quickstart/leaderboard.csv), then a majority vote of the top 3
# models chosen on validation data (results/quickstart/ensembles/majority-k3/), and the
# report with figures and statistics (results/quickstart/report/report.md).
demo: setup
	$(BIN)/bench-train -m experiment=quickstart
	$(BIN)/bench-ensemble results/quickstart k=3 method=majority
	$(BIN)/bench-report results/quickstart

# Smear fields end to end: a detector (experiment=detect_quickstart), the demo's top-3 ensemble typing
# the white cells and platelets it finds, on 24 fresh synthetic fields (seed 1; the detector trained on
# seed 0) scored against their true boxes: results/smear-chain/ (summary.md, counts.csv, fields/*.png).
SMEAR_DET := results/detect_quickstart/runs/fasterrcnn_mobilenet_v3_large_320_fpn/seed0
smear-demo: setup
	$(BIN)/bench-train experiment=detect_quickstart
	test -f results/quickstart/ensembles/majority-k3/members.csv || $(MAKE) demo
	rm -rf results/smear-fields && $(BIN)/python -m bench.cli.smear_fields results/smear-fields --n 24 --seed 1
	$(BIN)/bench-predict results/smear-fields/images --detector $(SMEAR_DET) \
		--classifier results/quickstart/ensembles/majority-k3 --crop-size 64 \
		--truth results/smear-fields/instances.json --out results/smear-chain
	$(BIN)/bench-report results/smear-chain

test: setup
	$(BIN)/python -m pytest

# The tests marked cluster against a throwaway single-node Slurm cluster started on this machine
# (tools/local_slurm.py: Debian's slurm-wlm and munge, installed when missing; needs root), stopped by
# its PIDs afterwards. Without root or the packages it prints why and skips.
# The MLflow tracking server of its tracking test lives in its own environment (.venv-mlflow: the full
# mlflow package, server and all, which bench itself never needs).
MLFLOW_VENV ?= .venv-mlflow
cluster-test: setup
	@test -x $(MLFLOW_VENV)/bin/mlflow || ($(PYTHON) -m venv $(MLFLOW_VENV) && \
		$(MLFLOW_VENV)/bin/python -m pip install --quiet --disable-pip-version-check mlflow) || \
		echo "could not install mlflow in $(MLFLOW_VENV): the tracking-server test will skip"
	BENCH_MLFLOW=$(abspath $(MLFLOW_VENV))/bin/mlflow $(BIN)/python tools/local_slurm.py -- \
		$(BIN)/python -m pytest -m cluster tests/cluster -p no:cacheprovider

# Everything but the slow end-to-end tests.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"
