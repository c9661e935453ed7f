"""The training products alone in PyTorch: the peer of Tessera's `gpu-gemm` (bench/Tessera.Bench/Gpu/GpuMatMulBench.cs).

For each shape [LAYOUT:]M,N,K, bf16 random operands stored as an nn.Linear's three products hold them and multiplied by
torch.matmul (cuBLAS or cuBLASLt, as autograd runs them): nt c = a @ b.T (a (M, K), b (N, K): the forward), nn c = a @ b (a
(M, K), b (K, N): the input's gradient), tn c = a.T @ b (a (K, M), b (K, N): the weight's gradient). Median milliseconds over
--reps runs after 3 warm-ups, CUDA events; TFLOP/s counts 2 M N K.

    python3 bench/pytorch/gemm.py [--shapes "nt:16384,3072,2048;nn:16384,2048,3072"] [--reps 20]
"""
import argparse

import torch

from cuda_timing import median_ms


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="nt:16384,3072,2048;nt:16384,2048,2048;nt:16384,16384,2048;nt:16384,2048,8192;"
                        "nt:2048,128256,2048;nn:16384,2048,3072;nn:16384,2048,16384;nn:16384,8192,2048;tn:3072,2048,16384;"
                        "tn:16384,2048,16384;tn:2048,8192,16384")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, PyTorch {torch.__version__}")
    print("| layout | M | N | K | torch.matmul ms | TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for text in args.shapes.split(";"):
        layout, _, dims = text.rpartition(":")
        layout = layout or "nt"
        m, n, k = (int(x) for x in dims.split(","))
        gen = torch.Generator(device="cuda").manual_seed(1)
        a = torch.rand((k, m) if layout == "tn" else (m, k), device="cuda", generator=gen, dtype=torch.bfloat16) * 2 - 1
        b = (torch.rand((n, k) if layout == "nt" else (k, n), device="cuda", generator=gen, dtype=torch.bfloat16) * 2 - 1) * 0.05
        product = {"nt": lambda: a @ b.T, "nn": lambda: a @ b, "tn": lambda: a.T @ b}[layout]
        flop = 2.0 * m * n * k
        ms = median_ms(product, args.reps)
        print(f"| {layout} | {m} | {n} | {k} | {ms:.3f} | {flop / ms / 1e9:.0f} |")


if __name__ == "__main__":
    main()
