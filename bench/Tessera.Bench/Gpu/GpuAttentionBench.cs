using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Causal attention alone on one GPU, bf16: the FlashAttention-2 kernels (flash_attention.cu) against the Hopper kernel
/// (flash_attention_hopper.cu, <see cref="CudaBackendOptions.HopperAttention"/> and
/// <see cref="CudaBackendOptions.HopperAttentionBackward"/>, with CTAs of two warpgroups and of one) on the same random inputs, in two
/// backends of one process. Per shape: median milliseconds of the forward (with lse) and of the backward over --reps runs
/// after 3 warm-ups (CUDA events on each backend's stream), TFLOP/s counting the causal half of the products (forward
/// 2 B H T^2 D, backward 2.5 times that), and the norm-wise relative difference of the two forwards' outputs.
/// <para>A second table times the backward of each <see cref="CudaBackendOptions.HopperBackwardVariant"/> listed by
/// --backward-variants (default 1 to 10; "none" skips it) against FA-2's, on the same inputs.</para>
/// --backward-only prints that table alone (FA-2's backward and the variants; the forward runs once, untimed), for a profiler.
/// --fused-qkv passes q, k and v (and dq, dk, dv) as the model does: strided head slices of one (B, T, H + 2K, D) tensor, the
/// fused QKV product's output, instead of three contiguous tensors.
/// --cuda-options SETTINGS (<see cref="CudaBackendOptions.Parse"/>'s form) is the base of every backend's options, under the
/// settings each column names: an option the columns leave alone (a kernel variant under test, say) applies to all of them.
/// <para>Usage: gpu-attention [--shapes B,T,H,K,D;...] [--reps 10] [--backward-variants 1,3,7] [--backward-only] [--fused-qkv] [--cuda-options SETTINGS]. Default shapes: llama-1b
/// 8 x 2048 (H32 K8 D64), 4 x 4096, 2 x 8192, and llama-8b heads (H32 K8 D128) at 8 x 2048 and 4 x 4096.</para>
/// </summary>
public static class GpuAttentionBench
{

    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string shapes = "8,2048,32,8,64;4,4096,32,8,64;2,8192,32,8,64;8,2048,32,8,128;4,4096,32,8,128";
        int reps = 10;
        string variantList = "1,2,3,4,5,6,7,8,9,10";
        bool backwardOnly = false;
        bool fusedQkv = false;
        var baseOptions = CudaBackendOptions.Default;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--shapes": shapes = args[++i]; break;
                case "--reps": reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--backward-variants": variantList = args[++i]; break;
                case "--backward-only": backwardOnly = true; break;
                case "--fused-qkv": fusedQkv = true; break;
                case "--cuda-options": baseOptions = CudaBackendOptions.Parse(args[++i]); break;
                default: throw new ArgumentException($"gpu-attention: unknown argument '{args[i]}'");
            }
        }
        using var flash2 = new CudaBackend(0, baseOptions with { HopperAttention = false, HopperAttentionBackward = false });
        // The main table's Hopper columns: the forward with two and one warpgroups, and the first backward kernel likewise
        // (HopperBackwardVariant = 1); the variants' table has the second.
        using var hopper = new CudaBackend(0, baseOptions with { HopperAttention = true, HopperAttentionBackward = true, HopperAttentionWarpgroups = 2, HopperBackwardVariant = 1 });
        using var one = new CudaBackend(0, baseOptions with { HopperAttention = true, HopperAttentionBackward = true, HopperAttentionWarpgroups = 1, HopperBackwardVariant = 1 });
        var variants = variantList.Equals("none", StringComparison.OrdinalIgnoreCase) ? []
            : variantList.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
        var variantBackends = variants.Select(v => new CudaBackend(0, baseOptions with
        {
            HopperAttention = true, HopperAttentionBackward = true, HopperBackwardVariant = v,
        })).ToArray();
        var variantRows = new List<string>();
        Console.WriteLine($"device: {hopper.CudaDevice}; Hopper kernels used: forward {hopper.UsesHopperAttention}, backward {hopper.UsesHopperAttentionBackward}; "
            + (fusedQkv ? "q, k, v: head slices of one (B, T, H + 2K, D) tensor (the model's layout)" : "q, k, v: three contiguous tensors"));
        if (!backwardOnly)
        {
            Console.WriteLine("| B | T | H | K | D | FA-2 fwd ms | TFLOP/s | Hopper fwd ms | TFLOP/s | 1-WG fwd ms | TFLOP/s | FA-2 bwd ms | TFLOP/s | Hopper bwd ms | TFLOP/s | 1-WG bwd ms | TFLOP/s | outputs' rel. difference |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        foreach (var text in shapes.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var n = text.Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            if (n.Length != 5) throw new ArgumentException($"gpu-attention: shape '{text}' is not B,T,H,K,D");
            int b = n[0], t = n[1], h = n[2], kh = n[3], d = n[4];
            var rng = new Random(1);
            BFloat16[] Values(long count)
            {
                var values = new BFloat16[checked((int)count)];
                for (int i = 0; i < values.Length; i++) values[i] = BFloat16.FromSingle(rng.NextSingle() * 2 - 1);
                return values;
            }
            var q = Values((long)b * t * h * d); var k = Values((long)b * t * kh * d); var v = Values((long)b * t * kh * d);
            var dout = Values((long)b * t * h * d);
            double fwdFlop = 2.0 * b * h * (double)t * t * d, bwdFlop = 2.5 * fwdFlop;
            var (f2Fwd, f2Bwd, f2Out) = Measure(flash2, q, k, v, dout, b, t, h, kh, d, reps, fusedQkv, backwardOnly: backwardOnly);
            if (backwardOnly)
            {
                variantRows.Add(VariantRow(variantBackends, q, k, v, dout, b, t, h, kh, d, reps, fusedQkv, f2Bwd, bwdFlop));
                continue;
            }
            var (hFwd, hBwd, hOut) = Measure(hopper, q, k, v, dout, b, t, h, kh, d, reps, fusedQkv);
            var (pFwd, pBwd, _) = Measure(one, q, k, v, dout, b, t, h, kh, d, reps, fusedQkv);
            double diff = 0, norm = 0;
            for (int i = 0; i < f2Out.Length; i++)
            {
                double a = f2Out[i].ToSingle(), c = hOut[i].ToSingle();
                diff += (a - c) * (a - c); norm += a * a;
            }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {b} | {t} | {h} | {kh} | {d} | {f2Fwd:F2} | {fwdFlop / f2Fwd / 1e9:F0} | {hFwd:F2} | {fwdFlop / hFwd / 1e9:F0} | {pFwd:F2} | {fwdFlop / pFwd / 1e9:F0} | {f2Bwd:F2} | {bwdFlop / f2Bwd / 1e9:F0} | {hBwd:F2} | {bwdFlop / hBwd / 1e9:F0} | {pBwd:F2} | {bwdFlop / pBwd / 1e9:F0} | {Math.Sqrt(diff / Math.Max(norm, 1e-30)):E1} |"));
            if (variantBackends.Length > 0) variantRows.Add(VariantRow(variantBackends, q, k, v, dout, b, t, h, kh, d, reps, fusedQkv, f2Bwd, bwdFlop));
        }
        if (variantBackends.Length > 0)
        {
            Console.WriteLine();
            Console.WriteLine("Backward variants (HopperBackwardVariant), ms (TFLOP/s), median of " + reps.ToString(CultureInfo.InvariantCulture) + ":");
            Console.WriteLine("| B | T | H | K | D | FA-2 bwd | " + string.Join(" | ", variants.Select(v => $"variant {v}")) + " |");
            Console.WriteLine("|---|---|---|---|---|---|" + string.Concat(variants.Select(_ => "---|")));
            foreach (var row in variantRows) Console.WriteLine(row);
        }
        foreach (var be in variantBackends) be.Dispose();
        return 0;
    }

    private static (double Forward, double Backward, BFloat16[] Output) Measure(CudaBackend be, BFloat16[] q, BFloat16[] k, BFloat16[] v,
        BFloat16[] dout, int b, int t, int h, int kh, int d, int reps, bool fusedQkv, bool backward = true, bool backwardOnly = false)
    {
        Tensor Put(BFloat16[] values, params int[] dims)
        {
            var x = be.Allocate(new Shape(dims), DType.BF16);
            be.CopyFromHost<BFloat16>(values, x);
            return x;
        }
        var tq = Put(q, b, t, h, d); var tk = Put(k, b, t, kh, d); var tv = Put(v, b, t, kh, d); var tdo = Put(dout, b, t, h, d);
        var o = be.Allocate(new Shape(b, t, h, d), DType.BF16); var lse = be.Allocate(new Shape(b, h, t), DType.F32);
        Tensor dq, dk, dv;
        var owned = new List<Tensor>();
        if (fusedQkv)
        {
            // The model's layout: q, k, v (and their gradients) are head slices of one (B, T, H + 2K, D) tensor.
            var qkv = be.Allocate(new Shape(b, t, h + 2 * kh, d), DType.BF16);
            var dqkv = be.Allocate(new Shape(b, t, h + 2 * kh, d), DType.BF16);
            owned.AddRange([tq, tk, tv, qkv, dqkv]);
            be.Copy(tq, qkv.Slice(2, 0, h)); be.Copy(tk, qkv.Slice(2, h, kh)); be.Copy(tv, qkv.Slice(2, h + kh, kh));
            (tq, tk, tv) = (qkv.Slice(2, 0, h), qkv.Slice(2, h, kh), qkv.Slice(2, h + kh, kh));
            (dq, dk, dv) = (dqkv.Slice(2, 0, h), dqkv.Slice(2, h, kh), dqkv.Slice(2, h + kh, kh));
        }
        else
        {
            dq = be.Allocate(new Shape(b, t, h, d), DType.BF16);
            dk = be.Allocate(new Shape(b, t, kh, d), DType.BF16); dv = be.Allocate(new Shape(b, t, kh, d), DType.BF16);
            owned.AddRange([tq, tk, tv, dq, dk, dv]);
        }
        owned.AddRange([tdo, o, lse]);
        double scale = 1 / Math.Sqrt(d);
        double forward = backwardOnly ? Once(be, () => be.AttentionForward(tq, tk, tv, o, lse, scale))
            : GpuTiming.MedianMs(be, () => be.AttentionForward(tq, tk, tv, o, lse, scale), reps);
        double backwardMs = backward ? GpuTiming.MedianMs(be, () => be.AttentionBackward(tq, tk, tv, o, tdo, lse, dq, dk, dv, scale), reps) : double.NaN;
        var output = be.ToArray<BFloat16>(o);
        foreach (var x in owned) x.Storage.Dispose();
        return (forward, backwardMs, output);
    }

    // One row of the variants' table: FA-2's backward, then each variant's, ms (TFLOP/s).
    private static string VariantRow(CudaBackend[] backends, BFloat16[] q, BFloat16[] k, BFloat16[] v, BFloat16[] dout,
        int b, int t, int h, int kh, int d, int reps, bool fusedQkv, double flash2Ms, double flop)
    {
        var cells = backends.Select(be => Measure(be, q, k, v, dout, b, t, h, kh, d, reps, fusedQkv, backwardOnly: true).Backward)
            .Select(ms => string.Create(CultureInfo.InvariantCulture, $"{ms:F3} ({flop / ms / 1e9:F0})"));
        return string.Create(CultureInfo.InvariantCulture, $"| {b} | {t} | {h} | {kh} | {d} | {flash2Ms:F3} ({flop / flash2Ms / 1e9:F0}) | ") + string.Join(" | ", cells) + " |";
    }

    private static double Once(CudaBackend be, Action op)
    {
        op();
        be.Synchronize();
        return double.NaN;
    }
}
