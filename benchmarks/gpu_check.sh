#!/usr/bin/env bash
# One short run that checks and times every GPU path on a GPU machine (about 5 minutes on an H100).
#   bash benchmarks/gpu_check.sh [LOG_DIR]
# Optional input next to the repo root: .whl/ (wheels missing on the machine, e.g. megatron-core).
# The parity fixtures come from tests/fixtures (or NEMO_EAGLE_FIXTURES).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-/tmp/nemo_eagle_gpu}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() {  # step NAME TIMEOUT_S CMD...: run, log, and keep going
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log" | tail -n 40
  echo "=== $name exit ${PIPESTATUS[0]}"
}

step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"; python3 -c "import megatron.core as m; print(\"megatron-core\", m.__version__)"; python3 -c "import transformer_engine as te; print(\"TE\", te.__version__)" || echo "no transformer_engine"'
# only the modules that hold GPU tests: the others may need packages the GPU image lacks (NeMo, Hydra, FastAPI)
step gpu_tests 150 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors $(grep -rl "mark.gpu" tests --include="test_*.py")
step kernels 100 python3 benchmarks/kernel_ops.py
step gpu_scale 200 python3 benchmarks/gpu_scale.py
step vision_9b 120 python3 benchmarks/vision_9b.py --json "$LOG_DIR/vision_9b.json"
step preprocess_cpu 30 python3 benchmarks/preprocess.py --seconds 1
# serving engine: decode tokens/s (engine with CUDA graphs vs today's loop vs HF static cache + torch.compile)
step decode 420 python3 benchmarks/decode.py --presets eagle2-1b,eagle2-2b --batch-sizes 1,8,32,64
step generate_vs_hf 120 python3 benchmarks/generate.py --batch-sizes 1,8 --new-tokens 32
