# The two commands of the README: `make demo` and `make test`. Both set up .venv first
# (python -m venv + pip install -e ".[dev]"), once; later calls skip straight to the job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bench-installed

.PHONY: setup demo test test-fast clean-results

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

test: setup
	$(BIN)/python -m pytest

# Everything but the slow end-to-end tests.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"
