"""The training products alone in PyTorch: the peer of Tessera's `gpu-gemm` (bench/Tessera.Bench/Gpu/GpuMatMulBench.cs).

For each shape M,N,K: bf16 random a (M, K) and b (N, K), c = a @ b.T (torch.matmul, which runs cuBLAS or cuBLASLt as the
trainer's nn.Linear does), and the same through torch.nn.functional.linear. Median milliseconds over --reps runs after 3
warm-ups, CUDA events; TFLOP/s counts 2 M N K.

    python3 bench/pytorch/gemm.py [--shapes "16384,3072,2048;16384,2048,2048"] [--reps 20]
"""
import argparse

import torch
import torch.nn.functional as F


def median_ms(fn, reps):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[reps // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="16384,3072,2048;16384,2048,2048;16384,16384,2048;16384,2048,8192;2048,128256,2048")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, PyTorch {torch.__version__}")
    print("| M | N | K | a @ b.T ms | TFLOP/s | F.linear ms | TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for text in args.shapes.split(";"):
        m, n, k = (int(x) for x in text.split(","))
        gen = torch.Generator(device="cuda").manual_seed(1)
        a = torch.rand(m, k, device="cuda", generator=gen, dtype=torch.bfloat16) * 2 - 1
        b = (torch.rand(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) * 2 - 1) * 0.05
        flop = 2.0 * m * n * k
        mm = median_ms(lambda: a @ b.T, args.reps)
        lin = median_ms(lambda: F.linear(a, b), args.reps)
        print(f"| {m} | {n} | {k} | {mm:.3f} | {flop / mm / 1e9:.0f} | {lin:.3f} | {flop / lin / 1e9:.0f} |")


if __name__ == "__main__":
    main()
