#!/usr/bin/env bash
# Training throughput, mynah (candle) and PyTorch side by side on the identical model, data,
# batch and sequence length. Installs PyTorch into target/torch-venv on first use (a few GB,
# CUDA libraries included). Benchmarks only: never run in CI.
#
#   bench/compare_training.sh ../shared/corpus/fcc-dev.jsonl [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:?usage: bench/compare_training.sh CORPUS.jsonl [SECONDS]}
seconds=${2:-120}
venv=target/torch-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$venv"
    # PyPI's default wheel is a CUDA build: it pulls several GB of CUDA libraries it needs to
    # load, then runs on the CPU.
    "$venv/bin/pip" install -q torch numpy
fi
cargo build --release --quiet
export_dir=target/bench-export
minutes=$(python3 -c "print($seconds / 60)")
echo "== mynah (candle), ${seconds}s"
./target/release/mynah bench train --corpus "$corpus" --minutes "$minutes" --epochs 100 \
    --out target/bench-models --export "$export_dir" | grep -E '"(params|train_tokens_per_second|train_tokens_per_second_after_first_step|steps)"'
echo "== PyTorch, ${seconds}s"
"$venv/bin/python" bench/torch_reference.py "$export_dir" --seconds "$seconds" --threads "$(nproc)"
