#!/usr/bin/env bash
# Size and package count of a fresh venv made by the README's CPU set-up command (or other extras).
#   bash benchmarks/install_size.sh                      # the README's extras
#   bash benchmarks/install_size.sh "nemo,serve" --keep  # other extras; keep the venv
# TORCH_INDEX (default PyTorch's CPU wheel index) is where torch comes from; set it to "" to use pip's own config.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-nemo,megatron,serve,retrieval,export,dev}
KEEP=${2:-}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
VENV=$(mktemp -d)/venv
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
start=$(date +%s)
if [ -n "$TORCH_INDEX" ]; then
    "$VENV/bin/python" -m pip install -q torch==2.13.0 --index-url "$TORCH_INDEX"
else
    "$VENV/bin/python" -m pip install -q torch==2.13.0
fi
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
secs=$(( $(date +%s) - start ))
size=$(du -sm "$VENV" | cut -f1)
count=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l)
echo "extras [$EXTRAS]: ${size} MB, ${count} packages, installed in ${secs}s"
echo "largest:"
du -sm "$VENV"/lib/python3*/site-packages/* | sort -rn | head -12 | sed "s|$VENV/lib/python3[^/]*/site-packages/|  |"
if [ -z "$KEEP" ]; then rm -rf "$(dirname "$VENV")"; else echo "venv kept at $VENV"; fi
