using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;

namespace Tessera.Bench.Gpu;

/// <summary>
/// The training products alone on one GPU, bf16: cuBLASLt (the default backend, its heuristic's algorithm timed among the
/// first candidates as the trainer chooses it) against Tessera's Hopper kernel (gemm_hopper.cu,
/// <see cref="CudaBackendOptions.HopperTrainingProducts"/>) at 128 x 256 tiles in clusters of two sharing B by multicast and
/// without, the output staged through shared memory or stored from registers, and at 128 x 128 in clusters, on the same
/// random inputs in backends of
/// one process: c (M, N) = a (M, K) b (N, K)^T, an nn.Linear's forward. Per shape: median milliseconds over --reps runs after
/// 3 warm-ups (CUDA events on each backend's stream), TFLOP/s (2 M N K), and each output's norm-wise relative difference from
/// cuBLASLt's. bench/pytorch/gemm.py times torch.matmul at the same shapes (the peer, in the same device call).
/// <para>Usage: gpu-gemm [--shapes M,N,K;...] [--reps 20] [--cuda-options SETTINGS]. Default shapes: llama-1b's forward
/// products at 16,384 rows (8 x 2048 tokens): QKV 3,072 x 2,048, output 2,048 x 2,048, gate and up 16,384 x 2,048, down
/// 2,048 x 8,192, and the head 128,256 x 2,048 at 2,048 rows.</para>
/// </summary>
public static class GpuMatMulBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string shapes = "16384,3072,2048;16384,2048,2048;16384,16384,2048;16384,2048,8192;2048,128256,2048";
        int reps = 20;
        var baseOptions = CudaBackendOptions.Default;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--shapes": shapes = args[++i]; break;
                case "--reps": reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--cuda-options": baseOptions = CudaBackendOptions.Parse(args[++i]); break;
                default: throw new ArgumentException($"gpu-gemm: unknown argument '{args[i]}'");
            }
        }
        using var cublas = new CudaBackend(0, baseOptions with { HopperTrainingProducts = false });
        // gemm_hopper's columns: 128 x 256 tiles in clusters of two sharing B (the default), without clusters, each with the
        // staged stores (the default) and straight from registers; 128 x 128 in clusters.
        var variants = new (string Label, CudaBackend Backend)[]
        {
            ("128 x 256, pairs", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 256, HopperTrainingProductMulticast = true })),
            ("128 x 256, single", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 256, HopperTrainingProductMulticast = false })),
            ("128 x 256, pairs, direct stores", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 256, HopperTrainingProductStagedStores = false })),
            ("128 x 256, single, direct stores", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 256, HopperTrainingProductMulticast = false, HopperTrainingProductStagedStores = false })),
            ("128 x 128, pairs", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 128, HopperTrainingProductMulticast = true })),
        };
        Console.WriteLine($"device: {cublas.CudaDevice}; gemm_hopper: {variants[0].Backend.HopperTrainingProductsUnavailableReason ?? "runs"}");
        Console.WriteLine("| M | N | K | cuBLASLt ms | TFLOP/s | " + string.Join(" | ", variants.Select(v => $"gemm_hopper {v.Label} ms | TFLOP/s | rel. diff")) + " |");
        Console.WriteLine("|---|---|---|---|---|" + string.Concat(variants.Select(_ => "---|---|---|")));
        foreach (var text in shapes.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var n = text.Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            if (n.Length != 3) throw new ArgumentException($"gpu-gemm: shape '{text}' is not M,N,K");
            int m = n[0], cols = n[1], k = n[2];
            var rng = new Random(1);
            BFloat16[] Values(long count, float scale)
            {
                var values = new BFloat16[checked((int)count)];
                for (int i = 0; i < values.Length; i++) values[i] = BFloat16.FromSingle((rng.NextSingle() * 2 - 1) * scale);
                return values;
            }
            var a = Values((long)m * k, 1f);
            var b = Values((long)cols * k, 0.05f);
            double flop = 2.0 * m * cols * k;
            var (baseMs, baseOut) = Measure(cublas, a, b, m, cols, k, reps);
            string Cell(double ms) => string.Create(CultureInfo.InvariantCulture, $"{ms:F3} | {flop / ms / 1e9:F0}");
            var cells = variants.Select(v =>
            {
                var (ms, output) = Measure(v.Backend, a, b, m, cols, k, reps);
                return Cell(ms) + string.Create(CultureInfo.InvariantCulture, $" | {Difference(baseOut, output):E1}");
            }).ToList();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {m} | {cols} | {k} | {Cell(baseMs)} | ") + string.Join(" | ", cells) + " |");
        }
        foreach (var v in variants) v.Backend.Dispose();
        return 0;
    }

    private static (double Ms, BFloat16[] Output) Measure(CudaBackend be, BFloat16[] av, BFloat16[] bv, int m, int n, int k, int reps)
    {
        var a = be.Allocate(new Shape(m, k), DType.BF16);
        var b = be.Allocate(new Shape(n, k), DType.BF16);
        var c = be.Allocate(new Shape(m, n), DType.BF16);
        be.CopyFromHost<BFloat16>(av, a);
        be.CopyFromHost<BFloat16>(bv, b);
        void Op() => be.MatMul(a, b, c, transposeB: true);
        for (int i = 0; i < 3; i++) Op();
        using var start = new CudaEvent(be.CudaDevice);
        using var end = new CudaEvent(be.CudaDevice);
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            start.Record(be.Stream);
            Op();
            end.Record(be.Stream);
            end.Synchronize();
            times.Add(end.ElapsedSince(start));
        }
        times.Sort();
        var output = be.ToArray<BFloat16>(c);
        a.Storage.Dispose(); b.Storage.Dispose(); c.Storage.Dispose();
        return (times[reps / 2], output);
    }

    // ||x - y|| / ||x||
    private static double Difference(BFloat16[] x, BFloat16[] y)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double a = x[i].ToSingle(), b = y[i].ToSingle();
            diff += (a - b) * (a - b);
            norm += a * a;
        }
        return Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
    }
}
