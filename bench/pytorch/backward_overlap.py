"""Would the weight-gradient products of a Llama block's backward gain from running on a second stream?

A measurement to decide a design (issue 18), not a trainer. It replays the op sequence of Tessera's block backward
(src/Tessera.Models/Blocks/TransformerBlock.cs, SwiGluMlp.BackwardFused, Linear.Backward) for one layer of a preset at
B x T tokens, in bf16, with PyTorch's kernels standing in for Tessera's (cuBLAS products, SDPA's flash backward, elementwise
ops moving about the bytes of the SwiGLU, RMSNorm and RoPE backwards), and times L layers of it:

  serial      every op on one stream, in Tessera's order;
  overlapped  each dW product on a side stream as soon as its inputs are queued (before its sibling dX product); the main
              stream waits for a dW only before it overwrites what that dW reads (the residual gradient, which the RMSNorm
              backward accumulates into); both streams at the same priority;
  priority    as overlapped, the side stream at low priority (the main stream's CTAs are scheduled first as SMs free up).
The main stream is one high-priority stream in every variant, and the attention's forward is recorded on it, so that its
backward (which autograd runs on the forward's stream) runs there too.

Prints a markdown table: ms for L layers (median of --reps after --warmup), and each variant's speed over serial.
Usage: python3 bench/pytorch/backward_overlap.py [--preset llama-1b] [--batch 8] [--seq 2048] [--reps 20] [--warmup 5]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

# layers, width, query heads, key/value heads, MLP width (as in train_llama.py)
PRESETS = {
    "llama-1b": (16, 2048, 32, 8, 8192),
    "llama-3b": (28, 3072, 24, 8, 8192),
    "llama-8b": (32, 4096, 32, 8, 14336),
}


class Layer:
    def __init__(self, n, c, heads, kv, f, b, t, gen):
        d = c // heads
        qkv = (heads + 2 * kv) * d
        bf = dict(device="cuda", dtype=torch.bfloat16)
        r = lambda *s: torch.randn(*s, generator=gen, device="cuda").to(torch.bfloat16) * 0.02
        self.w_down, self.w_gu, self.w_o, self.w_qkv = r(c, f), r(2 * f, c), r(c, c), r(qkv, c)
        self.g_down, self.g_gu, self.g_o, self.g_qkv = (torch.zeros_like(w) for w in (self.w_down, self.w_gu, self.w_o, self.w_qkv))
        self.a, self.gu, self.h2, self.h1 = r(n, f), r(n, 2 * f), r(n, c), r(n, c)        # saved activations
        self.attn = r(n, c)
        self.da, self.dgu = torch.empty(n, f, **bf), torch.empty(n, 2 * f, **bf)
        self.dh = torch.empty(n, c, **bf)
        self.dqkv = r(n, qkv)
        q = r(b, heads, t, d).requires_grad_()
        k = r(b, kv, t, d).requires_grad_()
        v = r(b, kv, t, d).requires_grad_()
        self.qkv_in = (q, k, v)
        self.out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        self.dout = r(b, heads, t, d)
        self.f = f


def block_backward(L, d, main, side, overlap):
    """One layer's backward; d (N, C) is the residual gradient, updated in place."""
    def aside(fn):
        if not overlap:
            fn()
            return None
        side.wait_stream(main)
        with torch.cuda.stream(side):
            fn()
            ev = torch.cuda.Event()
            ev.record(side)
        return ev

    def wait(ev):
        if ev is not None:
            main.wait_event(ev)

    with torch.cuda.stream(main):
        f = L.f
        e_down = aside(lambda: L.g_down.addmm_(d.t(), L.a))                        # down dW reads d
        torch.matmul(d, L.w_down, out=L.da)                                        # down dX
        torch.mul(L.da, L.gu[:, :f], out=L.dgu[:, :f])                             # SwiGLU backward's bytes
        torch.mul(L.da, L.gu[:, f:], out=L.dgu[:, f:])
        aside(lambda: L.g_gu.addmm_(L.dgu.t(), L.h2))                              # gate/up dW
        torch.matmul(L.dgu, L.w_gu, out=L.dh)                                      # gate/up dX
        wait(e_down)                                                               # norm2 writes d
        d.addcmul_(L.dh, L.h2)                                                     # RMSNorm backward's bytes
        e_o = aside(lambda: L.g_o.addmm_(d.t(), L.attn))                           # O dW reads d
        torch.matmul(d, L.w_o, out=L.dh)                                           # O dX
        torch.autograd.grad(L.out, L.qkv_in, L.dout, retain_graph=True)            # attention backward
        torch.mul(L.dqkv, 1.0001, out=L.dqkv)                                      # RoPE backward's bytes
        aside(lambda: L.g_qkv.addmm_(L.dqkv.t(), L.h1))                            # QKV dW
        torch.matmul(L.dqkv, L.w_qkv, out=L.dh)                                    # QKV dX
        wait(e_o)                                                                  # norm1 writes d
        d.addcmul_(L.dh, L.h1)


def time_variant(layers, d, main, side, overlap, reps, warmup):
    times = []
    for i in range(warmup + reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(main)
        for L in layers:
            block_backward(L, d, main, side, overlap)
        main.wait_stream(side)
        end.record(main)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-1b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    nl, c, heads, kv, f = PRESETS[a.preset]
    n = a.batch * a.seq
    gen = torch.Generator(device="cuda").manual_seed(1234)
    print(f"seed 1234, {a.preset} {a.batch} x {a.seq}, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    main_s, side_same, side_low = (torch.cuda.Stream(priority=-1), torch.cuda.Stream(priority=-1),
                                   torch.cuda.Stream(priority=0))
    with torch.cuda.stream(main_s):   # the attention's forward, so that autograd runs its backward on the main stream
        layers = [Layer(n, c, heads, kv, f, a.batch, a.seq, gen) for _ in range(nl)]
        d = torch.randn(n, c, generator=gen, device="cuda").to(torch.bfloat16)
    torch.cuda.synchronize()
    rows = []
    for name, side_s, overlap in (("serial", side_same, False), ("overlapped", side_same, True),
                                  ("priority", side_low, True), ("serial (again)", side_same, False)):
        rows.append((name, time_variant(layers, d, main_s, side_s, overlap, a.reps, a.warmup)))
    base = rows[0][1]
    print(f"| variant | ms for {nl} layers' backward | speed over serial |")
    print("|---|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {base / ms:.3f} |")


if __name__ == "__main__":
    main()
