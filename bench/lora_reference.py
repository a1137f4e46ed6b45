"""PyTorch + peft reference for mynah's LoRA fine-tuning throughput (benchmarks only, never in CI).

Loads the same pretrained Hugging Face llama base that `mynah bench train --base BASE --export DIR`
used (float32, tied embeddings), wraps it with peft LoRA on the identical projections, rank and
alpha, and trains on random windows of the identical token stream, batch and sequence length
with the same optimiser settings (AdamW on the LoRA parameters only, gradient clipping). Prints
one JSON line with tokens/s.

    python3 bench/lora_reference.py DIR [--seconds 120] [--threads 2]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import peft
import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

ATTN = "sdpa"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.load(open(os.path.join(args.dir, "spec.json")))
    batch, seq, lora = spec["batch"], spec["seq_len"], spec["lora"]
    train = np.fromfile(os.path.join(args.dir, "train.u32"), dtype="<u4").astype(np.int64)
    rng = np.random.default_rng(42)
    torch.manual_seed(42)

    # The base's config.json has no "architectures" key, so build the config explicitly.
    config = LlamaConfig(**spec["config"], architectures=["LlamaForCausalLM"], use_cache=False)
    base, info = LlamaForCausalLM.from_pretrained(
        spec["base_dir"], config=config, dtype=torch.float32, attn_implementation=ATTN,
        output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"loading {spec['base_dir']}: {bad}")
    if config.tie_word_embeddings:
        assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=0.0, target_modules=TARGETS,
        bias="none", task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=spec["weight_decay"])

    def step():
        starts = rng.integers(0, len(train) - seq - 1, size=batch)
        w = torch.from_numpy(np.stack([train[s:s + seq + 1] for s in starts]))
        logits = model(input_ids=w[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["clip_norm"])
        opt.step()
        return loss.item()

    first_loss = step()  # warm-up: allocators and kernels, untimed
    steps, t0 = 0, time.perf_counter()
    while True:
        loss = step()
        steps += 1
        el = time.perf_counter() - t0
        if el >= args.seconds:
            break
    print(json.dumps({
        "tokens_per_second": steps * batch * seq / el, "steps": steps, "seconds": el,
        "train_loss": loss, "first_loss": first_loss, "threads": args.threads,
        "trainable_params": sum(p.numel() for p in params), "attn_implementation": ATTN,
        "torch": torch.__version__, "peft": peft.__version__,
        "transformers": transformers.__version__}))


if __name__ == "__main__":
    sys.exit(main())
