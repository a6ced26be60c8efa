# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv in the checkout and install jointseg with its dependencies;
# a second call with nothing changed installs nothing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# CPU machines: pin the CPU wheel of torch. GPU users: `make ... CONSTRAINTS=` (no pin).
CONSTRAINTS ?= constraints-cpu.txt
PIP_CONSTRAINT_ARGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
DEMO_OUT ?= demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-kernels lint format cli-docs bench pretrained clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_CONSTRAINT_ARGS) -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jointseg demo --out $(DEMO_OUT)

# The whole suite: the fast tests, then the slow end-to-end ones.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS) || test $$? -eq 5  # 5: no slow test selected

# The tests that bound a model trained in the test, again under another CPU's kernels
# (PyTorch's portable kernels, oneDNN at SSE4.1): drift in a bound shows where it starts.
# benchmarks/kernels.py runs any command under every setting this CPU can emulate.
KERNEL_ENV ?= ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41
test-kernels: $(STAMP)
	$(KERNEL_ENV) $(BIN)/python -m pytest -q -m trains $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# docs/cli.md, generated from the command line itself (tests/test_cli_reference.py fails when
# it is stale)
cli-docs: $(STAMP)
	$(BIN)/python -m jointseg.cli_reference

bench: $(STAMP)
	for b in preprocess synth model train predict compute; do $(BIN)/python benchmarks/$$b.py --quick; done

# The packaged model (docs/pretrained.md): synthesize, train, evaluate, pack into
# src/jointseg/pretrained/model. PRETRAINED_MINUTES=M trains in pieces of at most M minutes
# (each stops at an epoch end; exit status 3 means "paused", and the loop resumes it).
PRETRAINED_MINUTES ?=
pretrained: $(STAMP)
	@while :; do \
	  $(BIN)/python benchmarks/pretrained.py $(if $(PRETRAINED_MINUTES),--max-minutes $(PRETRAINED_MINUTES),); \
	  status=$$?; test $$status -eq 3 || exit $$status; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
