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
/// one process: c (M, N) = op(a) op(b) in an nn.Linear's three layouts, nt (a (M, K) b (N, K)^T, the forward), nn (a (M, K)
/// b (K, N), the input's gradient) and tn (a (K, M)^T b (K, N), the weight's gradient). Per shape: median milliseconds over --reps runs after
/// 3 warm-ups (CUDA events on each backend's stream), TFLOP/s (2 M N K), and each output's norm-wise relative difference from
/// cuBLASLt's. bench/pytorch/gemm.py times torch.matmul at the same shapes (the peer, in the same device call).
/// <para>Usage: gpu-gemm [--shapes [LAYOUT:]M,N,K;...] [--reps 20] [--beta 0] [--cuda-options SETTINGS] (LAYOUT nt, nn or tn;
/// nt when left out; --beta 1 accumulates into c, as a weight gradient does). Default shapes: llama-1b's products at 8 x 2048 tokens: the forward's QKV, output, gate and up, down and the
/// head (at 2,048 rows); the input gradients of QKV, gate/up and down; the weight gradients of QKV, gate/up and down.</para>
/// </summary>
public static class GpuMatMulBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        // llama-1b at 8 x 2048 tokens: the forward's QKV, output, gate/up, down and head; the input gradients of QKV, gate/up and
        // down; the weight gradients of QKV, gate/up and down.
        string shapes = "nt:16384,3072,2048;nt:16384,2048,2048;nt:16384,16384,2048;nt:16384,2048,8192;nt:2048,128256,2048;"
            + "nn:16384,2048,3072;nn:16384,2048,16384;nn:16384,8192,2048;tn:3072,2048,16384;tn:16384,2048,16384;tn:2048,8192,16384";
        int reps = 20;
        double beta = 0;
        var baseOptions = CudaBackendOptions.Default;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--shapes": shapes = args[++i]; break;
                case "--reps": reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--beta": beta = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--cuda-options": baseOptions = CudaBackendOptions.Parse(args[++i]); break;
                default: throw new ArgumentException($"gpu-gemm: unknown argument '{args[i]}'");
            }
        }
        using var cublas = new CudaBackend(0, baseOptions with { HopperTrainingProducts = false });
        // gemm_hopper's columns: 128 x 256 tiles in clusters of two sharing B with the staged stores (the defaults), without
        // clusters, and in clusters with the stores straight from registers.
        baseOptions = baseOptions with { TimeHopperTrainingProducts = false };   // the kernel itself, not the per-shape choice
        var variants = new (string Label, CudaBackend Backend)[]
        {
            ("128 x 256, pairs", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 256, HopperTrainingProductMulticast = true })),
            ("128 x 256, single", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 256, HopperTrainingProductMulticast = false })),
            ("128 x 256, pairs, direct stores", new CudaBackend(0, baseOptions with { HopperTrainingProducts = true, HopperTrainingProductColumns = 256, HopperTrainingProductStagedStores = false })),
        };
        Console.WriteLine($"device: {cublas.CudaDevice}; gemm_hopper: {variants[0].Backend.HopperTrainingProductsUnavailableReason ?? "runs"}; beta {beta.ToString(CultureInfo.InvariantCulture)}");
        Console.WriteLine("| layout | M | N | K | cuBLASLt ms | TFLOP/s | " + string.Join(" | ", variants.Select(v => $"gemm_hopper {v.Label} ms | TFLOP/s | rel. diff")) + " |");
        Console.WriteLine("|---|---|---|---|---|---|" + string.Concat(variants.Select(_ => "---|---|---|")));
        foreach (var text in shapes.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            int colon = text.IndexOf(':');
            string layout = colon < 0 ? "nt" : text[..colon];
            if (layout is not ("nt" or "nn" or "tn")) throw new ArgumentException($"gpu-gemm: layout '{layout}' in '{text}' is not nt, nn or tn");
            var n = text[(colon + 1)..].Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            if (n.Length != 3) throw new ArgumentException($"gpu-gemm: shape '{text}' is not [LAYOUT:]M,N,K");
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
            var (baseMs, baseOut) = Measure(cublas, layout, a, b, m, cols, k, reps, beta);
            string Cell(double ms) => string.Create(CultureInfo.InvariantCulture, $"{ms:F3} | {flop / ms / 1e9:F0}");
            var cells = variants.Select(v =>
            {
                var (ms, output) = Measure(v.Backend, layout, a, b, m, cols, k, reps, beta);
                return Cell(ms) + string.Create(CultureInfo.InvariantCulture, $" | {Difference(baseOut, output):E1}");
            }).ToList();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {layout} | {m} | {cols} | {k} | {Cell(baseMs)} | ") + string.Join(" | ", cells) + " |");
        }
        foreach (var v in variants) v.Backend.Dispose();
        return 0;
    }

    // a and b as stored: nt a (m, k) b (n, k); nn a (m, k) b (k, n); tn a (k, m) b (k, n).
    private static (double Ms, BFloat16[] Output) Measure(CudaBackend be, string layout, BFloat16[] av, BFloat16[] bv, int m, int n, int k, int reps,
        double beta)
    {
        bool ta = layout == "tn", tb = layout == "nt";
        var a = be.Allocate(ta ? new Shape(k, m) : new Shape(m, k), DType.BF16);
        var b = be.Allocate(tb ? new Shape(n, k) : new Shape(k, n), DType.BF16);
        var c = be.Allocate(new Shape(m, n), DType.BF16);
        be.Fill(c, 0.0);
        be.CopyFromHost<BFloat16>(av, a);
        be.CopyFromHost<BFloat16>(bv, b);
        // With beta, c accumulates over the runs (a weight gradient's form): the outputs compared are then those of equal
        // numbers of runs, as every backend runs the same warm-ups and repetitions.
        void Op() => be.MatMul(a, b, c, transposeA: ta, transposeB: tb, beta: beta);
        double ms = GpuTiming.MedianMs(be, Op, reps);
        var output = be.ToArray<BFloat16>(c);
        a.Storage.Dispose(); b.Storage.Dispose(); c.Storage.Dispose();
        return (ms, output);
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
