#!/usr/bin/env bash
# Container entrypoint: `nemo-eagle serve` configured from the NIM_* environment (names in API.md).
# Extra arguments are passed through, e.g. `docker run ... nemo-eagle:latest --max-tiles 6`.
set -euo pipefail

if [[ -z "${NIM_MODEL_PATH:-}" ]]; then
  echo "entrypoint: set NIM_MODEL_PATH to a hub id (hf://nvidia/Eagle2-1B) or a checkpoint directory mounted" \
       "into the container (-v /models/eagle:/models/eagle -e NIM_MODEL_PATH=/models/eagle)" >&2
  exit 2
fi
cache="${NIM_CACHE_PATH:-/opt/nim/.cache}"
if ! mkdir -p "${cache}" 2>/dev/null || [[ ! -w "${cache}" ]]; then
  echo "entrypoint: the model cache ${cache} is not writable by uid $(id -u); mount a volume owned by that user" >&2
  exit 2
fi
export HF_HOME="${HF_HOME:-${cache}/huggingface}"

exec nemo-eagle serve "$@"
