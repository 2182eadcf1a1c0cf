#!/usr/bin/env bash
# The CUDA checks in one run on a GPU machine that has torch, transformers, triton and numba but not tunelab's
# other dependencies: the numerics and emulator tests on CUDA, then the kernel and emulator benchmarks.
# Usage: bash benchmarks/cuda_checks.sh   (writes logs to $OUT when set)
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_numerics_accumulate.py tests/test_numerics_quantize.py \
    tests/test_numerics_device_packing.py tests/test_numerics_fidelity.py tests/test_emulator.py 2>&1 | tee "$out/cuda_tests.log" | tail -25
python3 benchmarks/accumulate_speed.py --device cuda --sweep 2>&1 | tee "$out/accumulate_speed.log"
python3 benchmarks/emulator_speed.py --skip-cpu --repeats 2 2>&1 | tee "$out/emulator_speed.log"
