"""PyTorch peer of Tessera's GPU training benchmark for the Llama family (bench/Tessera.Bench/Gpu/GpuTrainingBench.cs).

Written as a PyTorch user writes a Llama trainer (torchtitan's model, in one file): RMSNorm, separate q/k/v projections with
rotary embeddings (Hugging Face's rotate-half convention), grouped-query attention through F.scaled_dot_product_attention
(is_causal, flash backend; key/value heads repeated as torchtitan's repeat_kv does, or SDPA's enable_gqa with --gqa native),
SwiGLU MLP, an LM head (tied for the 1B and 3B shapes), F32 parameters under bf16 autocast, torch.compile of the whole model,
fused AdamW (betas 0.9/0.95, weight decay 0.1 on matrices) with global-norm clipping at 1.0, random init, synthetic random
tokens. --recompute wraps each block in torch.utils.checkpoint (non-reentrant), as torchtitan's full activation checkpointing.

The shapes are Tessera's presets (src/Tessera.Models/ModelPresets.cs): llama-1b (Llama 3.2 1B), llama-3b (Llama 3.2 3B),
llama-8b (Llama 3 8B). Prints the markdown row of Tessera's gpu-train: ms/step (median of CUDA-event timed steps after
warm-up), tokens/s, MFU = (6N + 12*L*T*C) * tokens/s over 989 and 790 TFLOP/s (N counts a tied table once, as Tessera does),
peak GiB (torch.cuda.max_memory_allocated), and the phase split (forward+loss, backward, optimizer).

Usage: python3 bench/pytorch/train_llama.py [--preset llama-1b] [--batch 8] [--seq 2048] [--steps 10] [--warmup 5]
           [--recompute] [--gqa repeat|native] [--no-compile] [--no-header] [--no-fallback] [--profile]
           [--curve-text FILE]
Halves the batch when it does not fit (unless --no-fallback), and says so.
--curve-text FILE trains --steps steps on the file's bytes as tokens instead, on the windows Tessera's
`gpu-train --curve-text` reads (step s, row r: T + 1 tokens from ((s * B) + r) * (T + 1), wrapping), and prints each step's
loss as a markdown row: the two trainers' curves side by side (random init differs, so they agree in shape, not value).
"""
import argparse
import gc
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import timed_training

# layers, width, query heads, key/value heads, MLP width, vocabulary, rope theta, tied embeddings
PRESETS = {
    "llama-1b": (16, 2048, 32, 8, 8192, 128256, 500000.0, True),
    "llama-3b": (28, 3072, 24, 8, 8192, 128256, 500000.0, True),
    "llama-8b": (32, 4096, 32, 8, 14336, 128256, 500000.0, False),
}


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c, heads, kv_heads, gqa):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.gqa = heads, kv_heads, c // heads, gqa
        self.wq = nn.Linear(c, heads * self.d, bias=False)
        self.wk = nn.Linear(c, kv_heads * self.d, bias=False)
        self.wv = nn.Linear(c, kv_heads * self.d, bias=False)
        self.wo = nn.Linear(heads * self.d, c, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.heads, self.d).transpose(1, 2)          # (B, H, T, D)
        k = self.wk(x).view(b, t, self.kv_heads, self.d).transpose(1, 2)       # (B, K, T, D)
        v = self.wv(x).view(b, t, self.kv_heads, self.d).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)                              # as Hugging Face's rotary embedding
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.gqa == "native":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            rep = self.heads // self.kv_heads
            k = k[:, :, None].expand(b, self.kv_heads, rep, t, self.d).reshape(b, self.heads, t, self.d)
            v = v[:, :, None].expand(b, self.kv_heads, rep, t, self.d).reshape(b, self.heads, t, self.d)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.heads * self.d))


class FeedForward(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.w1 = nn.Linear(c, hidden, bias=False)   # gate
        self.w3 = nn.Linear(c, hidden, bias=False)   # up
        self.w2 = nn.Linear(hidden, c, bias=False)   # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c, heads, kv_heads, hidden, gqa):
        super().__init__()
        self.attention_norm = nn.RMSNorm(c, eps=1e-5)
        self.attention = Attention(c, heads, kv_heads, gqa)
        self.ffn_norm = nn.RMSNorm(c, eps=1e-5)
        self.feed_forward = FeedForward(c, hidden)

    def forward(self, x, cos, sin):
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, layers, c, heads, kv_heads, hidden, vocab, theta, tied, max_seq, gqa, recompute):
        super().__init__()
        self.recompute = recompute
        self.tok_embeddings = nn.Embedding(vocab, c)
        self.layers = nn.ModuleList(Block(c, heads, kv_heads, hidden, gqa) for _ in range(layers))
        self.norm = nn.RMSNorm(c, eps=1e-5)
        self.output = nn.Linear(c, vocab, bias=False)
        if tied:
            self.output.weight = self.tok_embeddings.weight
        d = c // heads
        inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angles = torch.outer(torch.arange(max_seq, dtype=torch.float64), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)   # (T, D)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        t = idx.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = checkpoint(layer, x, cos, sin, use_reentrant=False) if self.recompute else layer(x, cos, sin)
        logits = self.output(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def curve(preset, batch, seq, steps, compile_model, gqa, path):
    """Per-step losses on consecutive windows of a file's bytes (Tessera's TrainingStepBenchmark.LossCurve windows)."""
    torch.manual_seed(0)
    layers, c, heads, kv_heads, hidden, vocab, theta, tied = PRESETS[preset]
    with torch.device("cuda"):
        model = Llama(layers, c, heads, kv_heads, hidden, vocab, theta, tied, seq, gqa, False)
    stream = torch.tensor(list(open(path, "rb").read()), dtype=torch.long)
    if stream.numel() < seq + 1:
        raise SystemExit(f"train_llama.py: {path} has {stream.numel()} bytes; one row needs {seq + 1}")
    opt = timed_training.adamw(model)
    step_model = torch.compile(model) if compile_model else model
    print(f"| step | loss: {preset} PyTorch bf16 autocast {batch} x {seq}, {path.split('/')[-1]} ({stream.numel():,} bytes as tokens), lr 0.0001 |")
    print("|---|---|")
    for s in range(steps):
        rows = [(torch.arange(seq + 1) + ((s * batch) + r) * (seq + 1)) % stream.numel() for r in range(batch)]
        window = torch.stack([stream[i] for i in rows]).cuda()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(window[:, :-1].contiguous(), window[:, 1:].contiguous())   # the model views targets flat
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        print(f"| {s + 1} | {loss.item():.5f} |", flush=True)


def measure(preset, batch, seq, steps, warmup, compile_model, recompute, gqa, profile=False):
    torch.manual_seed(0)
    layers, c, heads, kv_heads, hidden, vocab, theta, tied = PRESETS[preset]
    # Built on the GPU (as a user builds a large model): on the host, llama-8b's 8 billion F32 parameters took minutes to
    # initialize before the first step.
    with torch.device("cuda"):
        model = Llama(layers, c, heads, kv_heads, hidden, vocab, theta, tied, seq, gqa, recompute)
    n_params, rows, loss_value = timed_training.train_and_time(model, compile_model, vocab, batch, seq, steps, warmup, profile)
    timing = timed_training.timing_cells(rows, batch, seq, n_params, layers, c)
    print(f"train_llama.py: {torch.cuda.get_device_name()} torch {torch.__version__} {preset} B={batch} T={seq} gqa={gqa} "
          f"loss {loss_value:.4f} params {n_params}", file=sys.stderr)
    return (f"{timed_training.system_cell(compile_model)} {preset} | BF16 autocast | {batch} x {seq} | "
            f"{'yes' if recompute else 'no'} | {timing}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-1b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--recompute", action="store_true")
    ap.add_argument("--gqa", default="repeat", choices=["repeat", "native"])
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-header", action="store_true")
    ap.add_argument("--no-fallback", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print the last step's kernels, most GPU time first, to stderr")
    ap.add_argument("--curve-text", help="print per-step losses on this file's bytes instead of timing (see the module doc)")
    a = ap.parse_args()
    if a.curve_text:
        curve(a.preset, a.batch, a.seq, a.steps, not a.no_compile, a.gqa, a.curve_text)
        return
    timed_training.start(a.no_header)
    batch = a.batch
    while True:
        try:
            row = measure(a.preset, batch, a.seq, a.steps, a.warmup, not a.no_compile, a.recompute, a.gqa, a.profile)
        except torch.OutOfMemoryError:
            if batch == 1 or a.no_fallback:
                raise
            row = None
        if row is not None:
            print(row, flush=True)
            return
        # Outside the except block, so the failed attempt's traceback (and the tensors its frames hold) is gone.
        print(f"train_llama.py: {a.preset} B={batch} does not fit; trying B={batch // 2}", file=sys.stderr)
        batch //= 2
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
