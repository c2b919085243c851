# `make test` and `make train` work on a fresh machine: they create .venv/ when it is missing.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test train lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: the local CPU wheel; never let pip resolve it freely.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,onnx,keras,demo]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Two test processes (pytest-xdist) where there are two cores: many tests wait on a child process, a signal
# or a clock, and the second fills that time. Not more: training in a test already uses every core, and
# more processes would crowd the tests that time a run.
test: lint
	$(PY) -m pytest -q -n auto --maxprocesses 2

train: $(STAMP)
	$(VENV)/bin/eanet train

clean:
	rm -rf $(VENV) .pytest_cache
