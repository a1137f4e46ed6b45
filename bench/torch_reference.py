"""PyTorch reference for mynah's training throughput (benchmarks only, never in CI).

Trains the identical architecture (llama-style: tied embeddings, RMSNorm, rotate-half RoPE,
SwiGLU, no biases) on the identical token streams, batch and sequence length that
`mynah bench train --export DIR` wrote, with the same optimiser settings, and prints tokens/s.

    python3 bench/torch_reference.py DIR [--seconds 120] [--threads 2]
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["hidden_size"], c["intermediate_size"]
        self.h = c["num_attention_heads"]
        self.hd = d // self.h
        self.attn_norm = RMSNorm(d, c["rms_norm_eps"])
        self.q = torch.nn.Linear(d, d, bias=False)
        self.k = torch.nn.Linear(d, d, bias=False)
        self.v = torch.nn.Linear(d, d, bias=False)
        self.o = torch.nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, c["rms_norm_eps"])
        self.gate = torch.nn.Linear(d, f, bias=False)
        self.up = torch.nn.Linear(d, f, bias=False)
        self.down = torch.nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        n = self.attn_norm(x)
        q = self.q(n).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(n).view(b, t, self.h, self.hd).transpose(1, 2)
        v = self.v(n).view(b, t, self.h, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(y)
        n = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(n)) * self.up(n))


class Model(torch.nn.Module):
    def __init__(self, c, seq_len):
        super().__init__()
        d = c["hidden_size"]
        self.embed = torch.nn.Embedding(c["vocab_size"], d)
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(d, c["rms_norm_eps"])
        hd = d // c["num_attention_heads"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd // 2).float() * 2 / hd))
        freqs = torch.arange(seq_len).float()[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos()[None, None])
        self.register_buffer("sin", emb.sin()[None, None])
        self.register_buffer("mask", torch.full((seq_len, seq_len), float("-inf")).triu(1))
        std, std_out = 0.02, 0.02 / math.sqrt(2 * c["num_hidden_layers"])
        for name, p in self.named_parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, 0.0, std_out if name.endswith(("o.weight", "down.weight")) else std)

    def forward(self, ids):
        x = self.embed(ids)
        t = ids.shape[1]
        for blk in self.blocks:
            x = blk(x, self.cos[..., :t, :], self.sin[..., :t, :], self.mask[:t, :t])
        return self.norm(x) @ self.embed.weight.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.load(open(os.path.join(args.dir, "spec.json")))
    c, batch, seq = spec["config"], spec["batch"], spec["seq_len"]
    train = np.fromfile(os.path.join(args.dir, "train.u32"), dtype="<u4").astype(np.int64)
    starts = np.arange(0, (len(train) - 1) // seq) * seq
    rng = np.random.default_rng(42)
    rng.shuffle(starts)
    torch.manual_seed(42)
    model = Model(c, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=spec["weight_decay"])
    params = sum(p.numel() for p in model.parameters())
    step, tokens, t0 = 0, 0, None
    while True:
        for i in range(0, len(starts) - batch + 1, batch):
            idx = starts[i:i + batch]
            x = torch.from_numpy(np.stack([train[s:s + seq] for s in idx]))
            y = torch.from_numpy(np.stack([train[s + 1:s + seq + 1] for s in idx]))
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip_norm"])
            opt.step()
            step += 1
            if step == 3:  # the first steps warm up allocators and kernels
                t0, tokens = time.perf_counter(), 0
            elif t0 is not None:
                tokens += batch * seq
                if time.perf_counter() - t0 >= args.seconds:
                    el = time.perf_counter() - t0
                    print(json.dumps({"framework": f"pytorch {torch.__version__}", "params": params,
                                      "threads": args.threads, "steps": step, "loss": loss.item(),
                                      "train_tokens_per_second": tokens / el}, indent=2))
                    return


if __name__ == "__main__":
    sys.exit(main())
