#!/usr/bin/env bash
# LoRA fine-tuning throughput, mynah (candle) and PyTorch + peft side by side on the identical
# pretrained base, data, batch, sequence length and adapter shape. Installs PyTorch, transformers
# and peft into target/torch-venv on first use (the CPU wheel when download.pytorch.org answers,
# else PyPI's default, a CUDA build of a few GB). Benchmarks only: never run in CI.
#
#   bench/compare_lora.sh ../shared/corpus/fcc-dev.jsonl models/base/smollm2-135m [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bench/compare_lora.sh CORPUS.jsonl BASE_DIR [SECONDS]"
corpus=${1:?$usage}
base=${2:?$usage}
seconds=${3:-120}
venv=target/torch-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null ||
        "$venv/bin/pip" install -q torch
fi
if ! "$venv/bin/python" -c "import numpy, transformers, peft, safetensors" 2>/dev/null; then
    "$venv/bin/pip" install -q numpy transformers peft safetensors
fi
cargo build --release --quiet
export_dir=target/bench-lora-export
minutes=$(python3 -c "print($seconds / 60)")
echo "== mynah (candle) LoRA, ${seconds}s"
mynah_out=$(./target/release/mynah bench train --corpus "$corpus" --base "$base" --minutes "$minutes" \
    --epochs 100 --out target/bench-models --export "$export_dir")
echo "$mynah_out" | grep -E '"(train_tokens_per_second|train_tokens_per_second_after_first_step|steps)"'
echo "== PyTorch + peft LoRA, ${seconds}s"
torch_out=$("$venv/bin/python" bench/lora_reference.py "$export_dir" --seconds "$seconds" \
    --threads "$(nproc)" | tail -n 1)
echo "$torch_out"
MYNAH="$mynah_out" TORCH="$torch_out" python3 - <<'EOF'
import json, os, re
figure = lambda key: float(re.search(r'"%s":\s*([0-9.eE+-]+)' % key, os.environ["MYNAH"]).group(1))
m, steady = figure("train_tokens_per_second"), figure("train_tokens_per_second_after_first_step")
t = json.loads(os.environ["TORCH"])["tokens_per_second"]
# PyTorch's figure leaves out its first (warm-up) step; so does the first ratio.
print(f"== tokens/s after the first step: mynah {steady:.1f}, PyTorch {t:.1f}, mynah/PyTorch {steady / t:.2f}")
print(f"== mynah with its first step: {m:.1f} tokens/s, {m / t:.2f}x")
EOF
