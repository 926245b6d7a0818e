#!/usr/bin/env bash
# Wheels the GPU machine lacks for bench/train_gpu.py and `pytest -m gpu` (it has torch, transformers, peft,
# accelerate, tokenizers, pandas; not trl, bitsandbytes, datasets, pydantic, prefect; no package registry). Run here, then carry .whl/ (ignored by git) to the device:
#   bash bench/gpu_wheels.sh && du -sh .whl
# and on the device: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Versions as installed together in this project's venv (pyproject.toml), Python 3.12 as on the device.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  "trl==1.16.0" "datasets==$(.venv/bin/python -c 'import datasets; print(datasets.__version__)')" \
  "dill==$(.venv/bin/python -c 'import dill; print(dill.__version__)')" \
  "multiprocess==$(.venv/bin/python -c 'import multiprocess; print(multiprocess.__version__)')" \
  "bitsandbytes>=0.45" "liger-kernel>=0.6" \
  "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  annotated-types typing-inspection
ls -la .whl
