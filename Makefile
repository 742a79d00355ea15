# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Installed before the package so pip never resolves torch itself (an unpinned torch pulls
# several GB of CUDA wheels). Override for GPU machines: make TORCH_SPEC="torch==2.13.0" ...
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Trains the small gSTA (SimVPv2) preset on the embedded synthetic data on a local Ray.
demo: $(STAMP)
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(BIN)/python jobs/train.py --storage runs

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV)
