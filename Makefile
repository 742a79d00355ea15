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

# Until the training job lands (issue 6), the demo prints the model zoo's cost table.
demo: $(STAMP)
	$(BIN)/python jobs/profile.py --iters 2 --batch-size 2

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV)
