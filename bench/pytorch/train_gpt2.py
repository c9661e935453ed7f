"""PyTorch reference for Tessera's GPU training benchmark (bench/Tessera.Bench/Gpu/GpuTrainingBench.cs).

GPT-2 124M (12 layers, 768 wide, 12 heads, vocabulary padded to 50304, tied head), random init, synthetic
random tokens, bf16 autocast, F.scaled_dot_product_attention (flash), torch.compile, fused AdamW with
global-norm clipping. Prints the same markdown columns as Tessera's gpu-train: ms/step (median of CUDA-event
timed steps after warm-up), tokens/s, MFU = (6N + 12*L*T*C) * tokens/s over 989 and 790 TFLOP/s, peak GiB
(torch.cuda.max_memory_allocated), and the phase split (forward+loss, backward, optimizer).

Usage: python3 bench/pytorch/train_gpt2.py [--batch 64] [--seq 1024] [--steps 10] [--warmup 5] [--no-compile] [--no-header]
Halves the batch when it does not fit, and says so.
"""
import argparse
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import timed_training


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers=12, c=768, h=12, vocab=50304, max_seq=1024):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(max_seq, c)
        self.blocks = nn.ModuleList(Block(c, h) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)
        self.lm_head = nn.Linear(c, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def measure(batch, seq, steps, warmup, compile_model, profile=False):
    torch.manual_seed(0)
    layers, c, vocab = 12, 768, 50304
    model = GPT(layers, c, 12, vocab, seq).cuda()
    n_params, rows, loss_value = timed_training.train_and_time(model, compile_model, 50257, batch, seq, steps, warmup, profile)
    timing = timed_training.timing_cells(rows, batch, seq, n_params, layers, c)
    print(f"train_gpt2.py: {torch.cuda.get_device_name()} torch {torch.__version__} B={batch} T={seq} loss {loss_value:.4f} "
          f"params {n_params}", file=sys.stderr)
    return f"{timed_training.system_cell(compile_model)} gpt2-124m | BF16 autocast | {batch} x {seq} | no | {timing}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-header", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print the last step's kernels, most GPU time first, to stderr")
    a = ap.parse_args()
    timed_training.start(a.no_header)
    batch = a.batch
    while True:
        try:
            print(measure(batch, a.seq, a.steps, a.warmup, not a.no_compile, a.profile), flush=True)
            return
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            print(f"train_gpt2.py: B={batch} does not fit; trying B={batch // 2}", file=sys.stderr)
            batch //= 2
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
