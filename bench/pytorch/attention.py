"""Causal attention alone in PyTorch: the peer of Tessera's `gpu-attention` (bench/Tessera.Bench/Gpu/GpuAttentionBench.cs).

For each shape B,T,H,K,D: bf16 random q (B, H, T, D), k and v (B, K, T, D), torch.nn.functional.scaled_dot_product_attention
with is_causal=True and enable_gqa=True (grouped-query attention read directly, as Tessera's kernels do), under the backend
PyTorch picks by itself (on an H200 with PyTorch 2.11 the training profile shows cuDNN's sm90 flash kernels), and under each
backend that can be forced (cuDNN, flash, efficient), where it runs. Median milliseconds of the forward and of the backward
(autograd of the forward's output against a fixed gradient, the forward excluded) over --reps runs after 3 warm-ups, CUDA
events; TFLOP/s counts the causal half as gpu-attention does (forward 2 B H T^2 D, backward 2.5 times that).

    python3 bench/pytorch/attention.py [--shapes "2,8192,32,8,64;8,2048,32,8,64"] [--reps 10]
"""
import argparse

import torch

from cuda_timing import median_ms
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def measure(q, k, v, dout, reps):
    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    fwd = median_ms(forward, reps)
    out = forward()

    def backward():
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

    return fwd, median_ms(backward, reps)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="8,2048,32,8,64;4,4096,32,8,64;2,8192,32,8,64;8,2048,32,8,128;4,4096,32,8,128")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(1)
    backends = [("default", None), ("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print("| B | T | H | K | D | " + " | ".join(f"{n} fwd ms (TFLOP/s) | {n} bwd ms (TFLOP/s)" for n, _ in backends) + " |")
    print("|---|---|---|---|---|" + "---|---|" * len(backends))
    for text in args.shapes.split(";"):
        b, t, h, kh, d = (int(x) for x in text.split(","))
        q = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, kh, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(b, kh, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dout = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
        flop = 2.0 * b * h * t * t * d
        cells = []
        for _, backend in backends:
            try:
                if backend is None:
                    fwd, bwd = measure(q, k, v, dout, args.reps)
                else:
                    with sdpa_kernel(backend):
                        fwd, bwd = measure(q, k, v, dout, args.reps)
                cells += [f"{fwd:.3f} ({flop / fwd / 1e9:.0f})", f"{bwd:.3f} ({2.5 * flop / bwd / 1e9:.0f})"]
            except RuntimeError as e:  # a backend that cannot run this shape (or GQA) says so in its cell
                cells += [f"n/a: {str(e).splitlines()[0][:60]}", "n/a"]
        print(f"| {b} | {t} | {h} | {kh} | {d} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
