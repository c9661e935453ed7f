using Tessera.Cuda;
using Tessera.Cuda.Compilation;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Two backends on device 0 beside the shared one, for the Hopper attention kernel (flash_attention_hopper.cu): one with
/// <see cref="CudaBackendOptions.HopperAttention"/> and <see cref="CudaBackendOptions.HopperAttentionBackward"/> on and its ops profiled (so a test sees which kernel ran), one with it
/// off (the FlashAttention-2 kernel), and one with CTAs of one warpgroup. Holds the reason where there is no device.
/// </summary>
public sealed class HopperAttentionFixture : IDisposable
{
    public HopperAttentionFixture()
    {
        try
        {
            // The first backward kernel (HopperBackwardVariant = 1) with two warpgroups and with one; the second's variants below.
            Hopper = new CudaBackend(0, CudaBackendOptions.Default with
            {
                HopperAttention = true, HopperAttentionBackward = true, HopperAttentionWarpgroups = 2, HopperBackwardVariant = 1, ProfileOps = true,
                HopperAttentionForwardTensorMaps = false,
            });
            OneWarpgroup = new CudaBackend(0, CudaBackendOptions.Default with
            {
                HopperAttention = true, HopperAttentionBackward = true, HopperAttentionWarpgroups = 1, HopperBackwardVariant = 1, ProfileOps = true,
                HopperAttentionForwardTensorMaps = false,
            });
            Defaults = new CudaBackend(0, CudaBackendOptions.Default with { ProfileOps = true });
            Flash2 = new CudaBackend(0, CudaBackendOptions.Default with { HopperAttention = false, HopperAttentionBackward = false });
            BackwardVariants = [.. new[] { 2, 3, 4, 5, 6, 7, 8, 9, 10 }.Select(v => new CudaBackend(0, CudaBackendOptions.Default with
            {
                HopperAttention = true, HopperAttentionBackward = true, HopperBackwardVariant = v, ProfileOps = true,
                HopperAttentionBackwardTensorMaps = false,
            }))];
            TensorMapVariants = [.. new[] { 2, 3, 4, 6, 9 }.Select(v => new CudaBackend(0, CudaBackendOptions.Default with
            {
                HopperAttention = true, HopperAttentionBackward = true, HopperBackwardVariant = v, HopperAttentionBackwardTensorMaps = true,
                ProfileOps = true,
            }))];
            ForwardTensorMaps = new CudaBackend(0, CudaBackendOptions.Default with { HopperAttentionForwardTensorMaps = true, ProfileOps = true });
            WarpSpecialized = new CudaBackend(0, CudaBackendOptions.Default with { HopperAttentionForwardWarpSpecialized = true, ProfileOps = true });
            ForwardCopies = new CudaBackend(0, CudaBackendOptions.Default with { HopperAttentionForwardTensorMaps = false, ProfileOps = true });
        }
        catch (Exception e) when (e is Tessera.Cuda.Interop.CudaUnavailableException or DllNotFoundException or EntryPointNotFoundException)
        {
            Reason = e.Message;
        }
    }

    public CudaBackend? Hopper { get; }
    public CudaBackend? Flash2 { get; }
    /// <summary>The Hopper kernels with CTAs of one warpgroup (<see cref="CudaBackendOptions.HopperAttentionWarpgroups"/> = 1).</summary>
    public CudaBackend? OneWarpgroup { get; }
    /// <summary>The second backward kernel's variants (<see cref="CudaBackendOptions.HopperBackwardVariant"/> 2 to 10), one backend each.</summary>
    public IReadOnlyList<CudaBackend> BackwardVariants { get; } = [];
    /// <summary>The variants of the second backward that its v2t build serves (2, 3, 4, 6, 9), with Q and dO by the tensor memory
    /// accelerator (<see cref="CudaBackendOptions.HopperAttentionBackwardTensorMaps"/>).</summary>
    public IReadOnlyList<CudaBackend> TensorMapVariants { get; } = [];
    /// <summary>The default options with the forward's key/value blocks by the tensor memory accelerator
    /// (<see cref="CudaBackendOptions.HopperAttentionForwardTensorMaps"/>), profiled.</summary>
    public CudaBackend? ForwardTensorMaps { get; }
    /// <summary>The default options with the warp-specialized forward
    /// (<see cref="CudaBackendOptions.HopperAttentionForwardWarpSpecialized"/>), profiled.</summary>
    public CudaBackend? WarpSpecialized { get; }
    /// <summary>The default options with the forward's key/value blocks by every thread's cp.async copies, profiled.</summary>
    public CudaBackend? ForwardCopies { get; }
    /// <summary>The default options (profiled): which backward they choose.</summary>
    public CudaBackend? Defaults { get; }
    public string? Reason { get; }

    public void Dispose()
    {
        foreach (var be in BackwardVariants) be.Dispose();
        foreach (var be in TensorMapVariants) be.Dispose();
        Defaults?.Dispose();
        ForwardTensorMaps?.Dispose();
        WarpSpecialized?.Dispose();
        ForwardCopies?.Dispose();
        Hopper?.Dispose();
        OneWarpgroup?.Dispose();
        Flash2?.Dispose();
    }
}

/// <summary>
/// The Hopper attention forward and backward against the FlashAttention-2 kernel and the CPU backend on the same random 16-bit inputs
/// (seed in every message): head sizes 64 and 128, GQA ratios 1 and 4, T not a multiple of the 128-row tile, B &gt; 1,
/// S &gt; T (queries at the end of the keys), causal. Skips, saying why, without a GPU or on a device other than compute
/// capability 9.0.
/// </summary>
public sealed unsafe class CudaHopperAttentionTests(HopperAttentionFixture fixture) : IClassFixture<HopperAttentionFixture>
{
    // Output, norm-wise relative. Against the CPU backend (f32 on the same rounded inputs): P is rounded to 16 bits before
    // P·V (relative 2^-9 per element for bf16, 2^-12 for f16) and the output to 16 bits (2^-9), independent errors that add
    // in norm well below 1e-2, as for the FlashAttention-2 kernel (CudaFlashAttentionTests). Against that kernel: both
    // round P, each against its own running maximum, and the output, so the same bound. lse: fp32 from exact products of
    // 16-bit values, exp2 on the special-function unit (relative 2^-22) and fp32 sums over at most 1,024 keys: 1e-4.
    // Gradients: P and dS rounded to 16 bits before the products, dq accumulated in fp32, dk, dv and dq rounded to 16 bits
    // once: the output's argument, 1e-2 (the FlashAttention-2 tests' bound for the same quantities).
    private const double OutTolerance = 1e-2, LseTolerance = 1e-4;

    private (CudaBackend Hopper, CudaBackend Flash2) Backends()
    {
        if (fixture.Hopper is null || fixture.Flash2 is null) Assert.Skip("no CUDA device: " + fixture.Reason);
        if (fixture.Hopper.CudaDevice.ComputeCapability != (9, 0))
            Assert.Skip($"the Hopper attention kernels need compute capability 9.0; this device is {fixture.Hopper.CudaDevice.Architecture}");
        // On a 9.0 device a kernel file that does not compile must fail here, not fall back to FA-2 unseen.
        Assert.True(fixture.Hopper.UsesHopperAttention, fixture.Hopper.HopperAttentionUnavailableReason);
        return (fixture.Hopper, fixture.Flash2);
    }

    [Theory]
    [InlineData(DType.BF16, 64, 2, 200, 200, 4, 4)]     // GQA 1, T not a multiple of 128
    [InlineData(DType.BF16, 64, 2, 333, 333, 8, 2)]     // GQA 4
    [InlineData(DType.BF16, 64, 1, 1024, 1024, 2, 2)]  // many key blocks
    [InlineData(DType.BF16, 128, 2, 200, 200, 4, 1)]    // D 128, GQA 4
    [InlineData(DType.F16, 128, 2, 130, 300, 4, 4)]     // S > T: queries at key positions 170 .. 299
    [InlineData(DType.F16, 64, 3, 77, 77, 4, 1)]        // one tile, partly past T
    public void ForwardAgreesWithFlashAttention2AndTheCpuBackend(DType dtype, int d, int b, int t, int s, int h, int kh)
    {
        var (hopper, flash2) = Backends();
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        string where = $"{dtype} D{d} B{b} T{t} S{s} H{h} K{kh} (seed {seed})";
        double scale = 1 / Math.Sqrt(d);
        double[] Values(long n) => Enumerable.Range(0, (int)n).Select(_ => Round(rng.NextDouble() * 2 - 1, dtype)).ToArray();
        var q = Values((long)b * t * h * d); var k = Values((long)b * s * kh * d); var v = Values((long)b * s * kh * d);

        var (oH, lH) = Forward(hopper, dtype, q, k, v, b, t, s, h, kh, d, scale);
        Assert.Contains(hopper.Profiler!.Totals(), r => r.Name == $"flash_forward_hopper_{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}");
        var (oF, lF) = Forward(flash2, dtype, q, k, v, b, t, s, h, kh, d, scale);

        var cpu = new CpuBackend(2);
        var cq = cpu.FromHost<float>(q.Select(x => (float)x).ToArray(), new Shape(b, t, h, d));
        var ck = cpu.FromHost<float>(k.Select(x => (float)x).ToArray(), new Shape(b, s, kh, d));
        var cv = cpu.FromHost<float>(v.Select(x => (float)x).ToArray(), new Shape(b, s, kh, d));
        var co = cpu.Allocate(new Shape(b, t, h, d), DType.F32); var cl = cpu.Allocate(new Shape(b, h, t), DType.F32);
        cpu.AttentionForward(cq, ck, cv, co, cl, scale);
        var oC = cpu.ToArray<float>(co).Select(x => (double)x).ToArray();
        var lC = cpu.ToArray<float>(cl).Select(x => (double)x).ToArray();

        AssertClose(oC, oH, OutTolerance, $"{where}: Hopper output vs the CPU backend");
        AssertClose(lC, lH, LseTolerance, $"{where}: Hopper lse vs the CPU backend");
        AssertClose(oF, oH, OutTolerance, $"{where}: Hopper output vs FlashAttention-2");
        AssertClose(lF, lH, LseTolerance, $"{where}: Hopper lse vs FlashAttention-2");

        var one = fixture.OneWarpgroup!;
        var (o1, l1) = Forward(one, dtype, q, k, v, b, t, s, h, kh, d, scale);
        Assert.Contains(one.Profiler!.Totals(), r => r.Name == $"flash_forward_hopper_wg1_{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}");
        AssertClose(oC, o1, OutTolerance, $"{where}: one-warpgroup Hopper output vs the CPU backend");
        AssertClose(lC, l1, LseTolerance, $"{where}: one-warpgroup Hopper lse vs the CPU backend");
        AssertClose(oF, o1, OutTolerance, $"{where}: one-warpgroup Hopper output vs FlashAttention-2");

        // The tensor-map build (K and V by the tensor memory accelerator) against the default tile it shares (one warpgroup at
        // D 64, two at 128): the same products in the same order over the same tiles (a key block's rows past S zeros in
        // both), so the same bits.
        var copies = fixture.ForwardCopies!;   // the default now is the tensor-map build
        var (oD, lD) = Forward(copies, dtype, q, k, v, b, t, s, h, kh, d, scale);
        // And the warp-specialized forward: each consumer warpgroup the same products over the same tiles as the default
        // tile's warpgroups, so the same bits.
        void SameBits(CudaBackend be, string kernel, string build)
        {
            be.Profiler!.Reset();
            var (o2, l2) = Forward(be, dtype, q, k, v, b, t, s, h, kh, d, scale);
            Assert.Contains(be.Profiler.Totals(), r => r.Name == kernel);
            int differ = Enumerable.Range(0, oD.Length).Count(i => oD[i] != o2[i]) + Enumerable.Range(0, lD.Length).Count(i => lD[i] != l2[i]);
            Assert.True(differ == 0, $"{where}: the {build} forward differs from the reference's in {differ} output and lse elements");
        }
        string suffix = $"{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}";
        SameBits(fixture.ForwardTensorMaps!, $"flash_forward_hopper_{suffix}_t", "tensor-map");
        SameBits(fixture.WarpSpecialized!, $"flash_forward_hopper_ws_{suffix}", "warp-specialized");
    }

    [Theory]
    [InlineData(DType.BF16, 64, 2, 200, 4, 4)]      // GQA 1, T not a multiple of the 128-key or 64-query blocks
    [InlineData(DType.BF16, 64, 2, 333, 8, 2)]      // GQA 4
    [InlineData(DType.BF16, 64, 1, 1024, 2, 2)]     // many query blocks per key block
    [InlineData(DType.BF16, 128, 2, 200, 4, 1)]     // D 128, GQA 4
    [InlineData(DType.F16, 128, 2, 130, 4, 4)]
    [InlineData(DType.F16, 64, 3, 77, 4, 1)]
    [InlineData(DType.BF16, 128, 1, 512, 2, 2)]     // D 128, GQA 1, T a multiple of 64, 8 query blocks
    [InlineData(DType.BF16, 64, 2, 64, 8, 2)]       // one query block, no padding; GQA 4
    [InlineData(DType.BF16, 64, 4, 1024, 16, 8)]    // GQA 2, 32 (kv head, batch) pairs: variants 9 and 10 cross windows (24 pairs a window on 132 SMs, 16 key blocks each), the last one partial
    public void BackwardAgreesWithFlashAttention2AndTheCpuBackend(DType dtype, int d, int b, int t, int h, int kh)
    {
        var (hopper, flash2) = Backends();
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        string where = $"{dtype} D{d} B{b} T{t} H{h} K{kh} (seed {seed})";
        double scale = 1 / Math.Sqrt(d);
        double[] Values(long n) => Enumerable.Range(0, (int)n).Select(_ => Round(rng.NextDouble() * 2 - 1, dtype)).ToArray();
        var q = Values((long)b * t * h * d); var k = Values((long)b * t * kh * d); var v = Values((long)b * t * kh * d);
        var dO = Values((long)b * t * h * d);

        // The forward on the CPU backend (f32 on the rounded inputs); its output rounded to the dtype is the backward's o,
        // as training feeds the forward's own 16-bit output back.
        var cpu = new CpuBackend(2);
        float[] F(double[] x) => x.Select(y => (float)y).ToArray();
        var cq = cpu.FromHost<float>(F(q), new Shape(b, t, h, d));
        var ck = cpu.FromHost<float>(F(k), new Shape(b, t, kh, d));
        var cv = cpu.FromHost<float>(F(v), new Shape(b, t, kh, d));
        var co = cpu.Allocate(new Shape(b, t, h, d), DType.F32); var cl = cpu.Allocate(new Shape(b, h, t), DType.F32);
        cpu.AttentionForward(cq, ck, cv, co, cl, scale);
        var o = cpu.ToArray<float>(co).Select(x => Round(x, dtype)).ToArray();
        var lse = cpu.ToArray<float>(cl).Select(x => (double)x).ToArray();
        var cdO = cpu.FromHost<float>(F(dO), new Shape(b, t, h, d));
        var co16 = cpu.FromHost<float>(F(o), new Shape(b, t, h, d));
        var cdq = cpu.Allocate(new Shape(b, t, h, d), DType.F32);
        var cdk = cpu.Allocate(new Shape(b, t, kh, d), DType.F32); var cdv = cpu.Allocate(new Shape(b, t, kh, d), DType.F32);
        cpu.AttentionBackward(cq, ck, cv, co16, cdO, cl, cdq, cdk, cdv, scale);
        double[] D(Tensor x) => cpu.ToArray<float>(x).Select(y => (double)y).ToArray();
        var (dqC, dkC, dvC) = (D(cdq), D(cdk), D(cdv));
        var cpuGrads = (dqC, dkC, dvC);
        // dq, dk, dv of one kernel against a reference, each within OutTolerance, named "{where}: {kernel} dq vs {reference}".
        void Gradients(string kernel, string reference, (double[] Dq, double[] Dk, double[] Dv) expected, (double[] Dq, double[] Dk, double[] Dv) actual)
        {
            AssertClose(expected.Dq, actual.Dq, OutTolerance, $"{where}: {kernel} dq vs {reference}");
            AssertClose(expected.Dk, actual.Dk, OutTolerance, $"{where}: {kernel} dk vs {reference}");
            AssertClose(expected.Dv, actual.Dv, OutTolerance, $"{where}: {kernel} dv vs {reference}");
        }

        hopper.Profiler!.Reset();
        var (dqH, dkH, dvH) = Backward(hopper, dtype, q, k, v, o, dO, lse, b, t, h, kh, d, scale);
        Assert.Contains(hopper.Profiler.Totals(), r => r.Name == $"flash_backward_hopper_{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}");
        var (dqF, dkF, dvF) = Backward(flash2, dtype, q, k, v, o, dO, lse, b, t, h, kh, d, scale);

        Gradients("Hopper", "the CPU backend", cpuGrads, (dqH, dkH, dvH));
        Gradients("Hopper", "FlashAttention-2", (dqF, dkF, dvF), (dqH, dkH, dvH));

        var one = fixture.OneWarpgroup!;
        one.Profiler!.Reset();
        var (dq1, dk1, dv1) = Backward(one, dtype, q, k, v, o, dO, lse, b, t, h, kh, d, scale);
        Assert.Contains(one.Profiler.Totals(), r => r.Name == $"flash_backward_hopper_wg1_{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}");
        Gradients("one-warpgroup Hopper", "the CPU backend", cpuGrads, (dq1, dk1, dv1));

        // The second backward kernel, each variant (overlapped products; largest work first; dQ by bulk reductions of tiles;
        // dQ before dK): every variant runs and reports before the first failure is raised.
        var failures = new List<string>();
        var byVariant = new Dictionary<int, (double[] Dq, double[] Dk, double[] Dv)>();
        foreach (var be in fixture.BackwardVariants)
        {
            int variant = be.Options.HopperBackwardVariant;
            try
            {
                be.Profiler!.Reset();
                var (dq2, dk2, dv2) = Backward(be, dtype, q, k, v, o, dO, lse, b, t, h, kh, d, scale);
                byVariant[variant] = (dq2, dk2, dv2);
                var names = be.Profiler.Totals().Select(r => r.Name).ToList();
                Assert.Contains($"flash_backward_hopper_{(variant is 5 or 7 or 8 or 10 ? "v2x" : "v2")}_{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}", names);
                if (variant is 3 or 6 or 7 or 8 or 9 or 10) Assert.Contains($"flash_backward_hopper_dq_cast_{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}", names);
                Gradients($"backward variant {variant}", "the CPU backend", cpuGrads, (dq2, dk2, dv2));
                Gradients($"backward variant {variant}", "FlashAttention-2", (dqF, dkF, dvF), (dq2, dk2, dv2));
            }
            catch (Xunit.Sdk.XunitException e)
            {
                failures.Add(e.Message);
            }
        }
        // The v2t build: the same products in the same order from the same tiles (a tile's rows past T are the next
        // sequence's instead of zeros, and masked), so each variant's dK and dV bit for bit; dQ is summed across CTAs by
        // reductions in no fixed order (no two runs of one kernel agree to the bit), so within OutTolerance of its build's.
        foreach (var be in fixture.TensorMapVariants)
        {
            int variant = be.Options.HopperBackwardVariant;
            be.Profiler!.Reset();
            var (dqT, dkT, dvT) = Backward(be, dtype, q, k, v, o, dO, lse, b, t, h, kh, d, scale);
            var names = be.Profiler.Totals().Select(r => r.Name).ToList();
            if (!names.Contains($"flash_backward_hopper_v2t_{(dtype == DType.BF16 ? "bf16" : "f16")}_d{d}"))
                failures.Add($"{where}: variant {variant} with tensor maps ran {string.Join(", ", names)}");
            else if (!byVariant.TryGetValue(variant, out var plain))
                failures.Add($"{where}: variant {variant} without tensor maps failed above");
            else
            {
                int differ = Enumerable.Range(0, dkT.Length).Count(i => dkT[i] != plain.Dk[i]) + Enumerable.Range(0, dvT.Length).Count(i => dvT[i] != plain.Dv[i]);
                if (differ != 0) failures.Add($"{where}: variant {variant} with tensor maps differs from its cp.async build in {differ} dK and dV elements");
                try
                {
                    AssertClose(plain.Dq, dqT, OutTolerance, $"{where}: variant {variant} with tensor maps dq vs its cp.async build");
                }
                catch (Xunit.Sdk.XunitException e)
                {
                    failures.Add(e.Message);
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>
    /// The default kernels against FlashAttention-2 at the shapes the model trains (llama-1b: B 8, T 2048, H 32, K 8, D 64;
    /// llama-8b's heads: B 2, T 4096, D 128), in the model's own layout: q, k and v are strided views into one fused
    /// (B, T, H + 2K, D) activation and dq, dk, dv views into its gradient, as <c>CausalSelfAttention</c> passes them, over
    /// grids of many waves. The other tests' shapes are small, contiguous and one wave. The default backward here is variant 9,
    /// whose CTAs go in windows of (kv head, batch) pairs: 12 pairs a window over 64 at D 64, 2 over 16 at D 128 (on 132 SMs),
    /// so these cross window boundaries on the device in the default configuration (the variant tests' 4 x 1024 case crosses
    /// them for variants 9 and 10 against the CPU backend; their other shapes fit one window, where the order is variant 3's).
    /// Checks, with seed: every (b, head)
    /// slice of the output and of each gradient within 1e-2 of FlashAttention-2's, norm-wise over the slice (the bound of
    /// the small-shape tests, now per slice so that one wrong tile cannot hide in a large norm); 48 sampled output rows within
    /// 1e-2 of an f64 softmax over the 16-bit inputs (the output's own rounding is 2^-9 and P's another 2^-9); and the
    /// forward's log-sum-exp within 1e-4 of FlashAttention-2's.
    /// </summary>
    [Theory]
    [InlineData(64, 8, 2048, 32, 8)]
    [InlineData(128, 2, 4096, 32, 8)]
    public void DefaultKernelsAgreeWithFlashAttention2AtTrainingShapesInTheModelsLayout(int d, int b, int t, int h, int kh)
    {
        Backends();
        var (defaults, flash2) = (fixture.Defaults!, fixture.Flash2!);
        int seed = Environment.TickCount, w = h + 2 * kh;
        var rng = new Random(seed);
        string where = $"BF16 D{d} B{b} T{t} H{h} K{kh}, strided q/k/v (seed {seed})";
        double scale = 1 / Math.Sqrt(d);
        double[] Values(long n) { var a = new double[n]; for (long i = 0; i < n; i++) a[i] = Round(rng.NextDouble() * 2 - 1, DType.BF16); return a; }
        var qkv = Values((long)b * t * w * d);
        var dO = Values((long)b * t * h * d);
        long At(int bi, int ti, int head, int di) => (((long)bi * t + ti) * w + head) * d + di;   // into (B, T, H + 2K, D)

        (double[] Out, double[] Lse, double[] Dq, double[] Dk, double[] Dv) Run(CudaBackend be, double[]? oIn, double[]? lseIn)
        {
            var tqkv = Put(be, qkv, DType.BF16, b, t, w, d);
            var (q, k, v) = (tqkv.Slice(2, 0, h), tqkv.Slice(2, h, kh), tqkv.Slice(2, h + kh, kh));
            var o = be.Allocate(new Shape(b, t, h, d), DType.BF16); be.Fill(o, double.NaN);
            var lse = be.Allocate(new Shape(b, h, t), DType.F32); be.Fill(lse, double.NaN);
            be.AttentionForward(q, k, v, o, lse, scale);
            var outValues = Get(be, o);
            var lseValues = be.ToArray<float>(lse).Select(x => (double)x).ToArray();
            // The backward from one shared forward (FlashAttention-2's output and lse), so only the backward kernels differ.
            if (oIn is not null) be.CopyFromHost<BFloat16>(oIn.Select(x => BFloat16.FromSingle((float)x)).ToArray(), o);
            if (lseIn is not null) be.CopyFromHost<float>(lseIn.Select(x => (float)x).ToArray(), lse);
            var tdo = Put(be, dO, DType.BF16, b, t, h, d);
            var dqkv = be.Allocate(new Shape(b, t, w, d), DType.BF16); be.Fill(dqkv, double.NaN);
            be.AttentionBackward(q, k, v, o, tdo, lse, dqkv.Slice(2, 0, h), dqkv.Slice(2, h, kh), dqkv.Slice(2, h + kh, kh), scale);
            var g = Get(be, dqkv);
            foreach (var x in new[] { tqkv, o, lse, tdo, dqkv }) x.Storage.Dispose();
            double[] Heads(int first, int count)
            {
                var r = new double[(long)b * t * count * d];
                for (int bi = 0; bi < b; bi++) for (int ti = 0; ti < t; ti++) for (int j = 0; j < count; j++)
                    Array.Copy(g, At(bi, ti, first + j, 0), r, (((long)bi * t + ti) * count + j) * d, d);
                return r;
            }
            return (outValues, lseValues, Heads(0, h), Heads(h, kh), Heads(h + kh, kh));
        }

        var f = Run(flash2, null, null);
        defaults.Profiler!.Reset();
        var x = Run(defaults, f.Out, f.Lse);
        var names = defaults.Profiler.Totals().Select(r => r.Name).ToList();
        Assert.Contains(names, n => n.StartsWith("flash_forward_hopper", StringComparison.Ordinal));
        Assert.Contains(names, n => n.StartsWith("flash_backward_hopper", StringComparison.Ordinal));

        // Per (b, head) slice of a (B, T, heads, D) array: ‖x − f‖ / ‖f‖ over the slice's T·D values.
        var failures = new List<string>();
        void Slices(string what, double[] expected, double[] actual, int heads)
        {
            double worst = 0; string worstAt = "";
            for (int bi = 0; bi < b; bi++)
                for (int j = 0; j < heads; j++)
                {
                    double diff = 0, norm = 0;
                    for (int ti = 0; ti < t; ti++)
                        for (int di = 0; di < d; di++)
                        {
                            long i = (((long)bi * t + ti) * heads + j) * d + di;
                            if (double.IsNaN(actual[i])) { failures.Add($"{where}: {what} element (b {bi}, t {ti}, head {j}, {di}) is NaN (not written)"); return; }
                            diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
                            norm += expected[i] * expected[i];
                        }
                    double rel = Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
                    if (rel > worst) (worst, worstAt) = (rel, $"b {bi}, head {j}");
                }
            TestContext.Current.TestOutputHelper?.WriteLine($"{where}: {what}: worst slice ({worstAt}) relative error {worst:E2} (bound 1e-2)");
            if (!(worst <= 1e-2)) failures.Add($"{where}: {what}: slice ({worstAt}) relative error {worst:E3} exceeds 1e-2");
        }
        // The forwards with K and V by the tensor memory accelerator (3D maps of the fused activation's views), the tensor-map
        // tile and the warp-specialized one: the default's bits.
        void SameBits(CudaBackend be, string kernel, string build, (double[] Out, double[] Lse, double[] Dq, double[] Dk, double[] Dv) reference)
        {
            be.Profiler!.Reset();
            var r = Run(be, f.Out, f.Lse);
            if (!be.Profiler.Totals().Any(p => p.Name == kernel))
                failures.Add($"{where}: the {build} forward ran {string.Join(", ", be.Profiler.Totals().Select(p => p.Name))}");
            int differ = Enumerable.Range(0, r.Out.Length).Count(i => r.Out[i] != reference.Out[i]) + Enumerable.Range(0, r.Lse.Length).Count(i => r.Lse[i] != reference.Lse[i]);
            if (differ != 0) failures.Add($"{where}: the {build} forward differs from the reference's in {differ} output and lse elements");
        }
        // (The default now is the tensor-map tile, so the reference is the cp.async build, run the same way.)
        var copies = Run(fixture.ForwardCopies!, f.Out, f.Lse);
        SameBits(fixture.ForwardTensorMaps!, $"flash_forward_hopper_bf16_d{d}_t", "tensor-map", copies);
        SameBits(fixture.WarpSpecialized!, $"flash_forward_hopper_ws_bf16_d{d}", "warp-specialized", copies);
        Slices("default output vs FlashAttention-2", f.Out, x.Out, h);
        Slices("default dq vs FlashAttention-2", f.Dq, x.Dq, h);
        Slices("default dk vs FlashAttention-2", f.Dk, x.Dk, kh);
        Slices("default dv vs FlashAttention-2", f.Dv, x.Dv, kh);
        double lseWorst = f.Lse.Zip(x.Lse, (e, a) => Math.Abs(a - e) / Math.Max(Math.Abs(e), 1e-30)).Max();
        TestContext.Current.TestOutputHelper?.WriteLine($"{where}: default lse vs FlashAttention-2: worst relative error {lseWorst:E2} (bound 1e-4)");
        if (!(lseWorst <= 1e-4)) failures.Add($"{where}: default lse vs FlashAttention-2: relative error {lseWorst:E3} exceeds 1e-4");

        // Sampled rows against an f64 softmax (first and last positions always among them: the causal edges).
        for (int sample = 0; sample < 48; sample++)
        {
            int bi = rng.Next(b), hi = rng.Next(h), ti = sample switch { 0 => 0, 1 => t - 1, _ => rng.Next(t) };
            int kvh = hi / (h / kh);
            var scores = new double[ti + 1];
            for (int j = 0; j <= ti; j++)
            {
                double dot = 0;
                for (int di = 0; di < d; di++) dot += qkv[At(bi, ti, hi, di)] * qkv[At(bi, j, h + kvh, di)];
                scores[j] = dot * scale;
            }
            double max = scores.Max(), sum = scores.Sum(sc => Math.Exp(sc - max));
            foreach (var (name, o) in new[] { ("default", x.Out), ("FlashAttention-2", f.Out) })
            {
                double diff = 0, norm = 0;
                for (int di = 0; di < d; di++)
                {
                    double r = 0;
                    for (int j = 0; j <= ti; j++) r += Math.Exp(scores[j] - max) / sum * qkv[At(bi, j, h + kh + kvh, di)];
                    double a = o[(((long)bi * t + ti) * h + hi) * d + di];
                    diff += (a - r) * (a - r); norm += r * r;
                }
                double rel = Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
                if (!(rel <= 1e-2)) failures.Add($"{where}: {name} output row (b {bi}, head {hi}, t {ti}) relative error {rel:E3} vs f64 exceeds 1e-2");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(20)));
    }

    /// <summary>
    /// No query sees a later key, in the default forward and in FlashAttention-2's, at a training shape in the model's
    /// strided layout: the keys and values at positions p and after are replaced by other (large) values, and every output
    /// row before p must stay the same bit for bit (a masked score is exp2(-inf) = 0 exactly, so a later key adds 0 · v).
    /// p runs over tile edges of both kernels (64- and 128-row tiles) and the first and last positions. A leak as small as
    /// one key on one row would let training read the next token; norm-wise output checks cannot see it.
    /// </summary>
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void NoQuerySeesALaterKey(int d)
    {
        Backends();
        const int b = 2, t = 2048, h = 32, kh = 8;
        int seed = Environment.TickCount, w = h + 2 * kh;
        var rng = new Random(seed);
        var qkv = new double[(long)b * t * w * d];
        for (long i = 0; i < qkv.Length; i++) qkv[i] = Round(rng.NextDouble() * 2 - 1, DType.BF16);
        double scale = 1 / Math.Sqrt(d);
        var failures = new List<string>();
        foreach (var (name, be) in new[] { ("default", fixture.Defaults!), ("FlashAttention-2", fixture.Flash2!) })
        {
            double[] Out(double[] values)
            {
                var tqkv = Put(be, values, DType.BF16, b, t, w, d);
                var o = be.Allocate(new Shape(b, t, h, d), DType.BF16); be.Fill(o, double.NaN);
                var lse = be.Allocate(new Shape(b, h, t), DType.F32);
                be.AttentionForward(tqkv.Slice(2, 0, h), tqkv.Slice(2, h, kh), tqkv.Slice(2, h + kh, kh), o, lse, scale);
                var r = Get(be, o);
                foreach (var x in new[] { tqkv, o, lse }) x.Storage.Dispose();
                return r;
            }
            var baseline = Out(qkv);
            foreach (int p in new[] { 1, 63, 64, 65, 127, 128, 129, 192, 1000, t - 1 })
            {
                var changed = (double[])qkv.Clone();
                for (int bi = 0; bi < b; bi++)
                    for (int ti = p; ti < t; ti++)
                        for (int j = h; j < w; j++)
                            for (int di = 0; di < d; di++)
                                changed[(((long)bi * t + ti) * w + j) * d + di] = Round(8 * (rng.NextDouble() * 2 - 1), DType.BF16);
                var o = Out(changed);
                int differ = 0; string first = "";
                for (int bi = 0; bi < b; bi++)
                    for (int ti = 0; ti < p; ti++)
                        for (int j = 0; j < h * d; j++)
                        {
                            long i = ((long)bi * t + ti) * h * d + j;
                            if (o[i].Equals(baseline[i])) continue;
                            if (differ++ == 0) first = $"b {bi}, row {ti}, head {j / d}, element {j % d}: {baseline[i]} became {o[i]}";
                        }
                if (differ > 0) failures.Add($"{name} D{d} (seed {seed}): keys from position {p} on changed {differ} outputs of rows before it; first at {first}");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>
    /// The default options take the measured best backward (the second kernel and the tile cast: variant 6 at this small
    /// shape, see <see cref="CudaBackend.MeasuredBestHopperBackward"/>), and its gradients are finite and written (a NaN-filled
    /// output that the kernels leave would show).
    /// </summary>
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void TheDefaultBackwardIsTheMeasuredBest(int d)
    {
        Backends();
        var be = fixture.Defaults!;
        int b = 1, t = 96, h = 4, kh = 2;
        Assert.Equal(6, be.HopperBackwardVariantFor(d, h, kh, t));
        var rng = new Random(7);
        double[] Values(long n) => Enumerable.Range(0, (int)n).Select(_ => Round(rng.NextDouble() * 2 - 1, DType.BF16)).ToArray();
        var q = Values((long)b * t * h * d); var k = Values((long)b * t * kh * d); var v = Values((long)b * t * kh * d);
        var o = Values((long)b * t * h * d); var dO = Values((long)b * t * h * d);
        var lse = Enumerable.Repeat(Math.Log(t), b * h * t).ToArray();
        be.Profiler!.Reset();
        var (dq, dk, dv) = Backward(be, DType.BF16, q, k, v, o, dO, lse, b, t, h, kh, d, 1 / Math.Sqrt(d));
        var names = be.Profiler.Totals().Select(r => r.Name).ToList();
        Assert.Contains($"flash_backward_hopper_{(be.Options.HopperAttentionBackwardTensorMaps ? "v2t" : "v2")}_bf16_d{d}", names);
        Assert.Contains($"flash_backward_hopper_dq_cast_bf16_d{d}", names);
        Assert.All(dq.Concat(dk).Concat(dv), x => Assert.True(double.IsFinite(x)));
    }

    /// <summary>
    /// The backward kernels' registers, local memory (spills) and CTAs per SM at the shared memory the host launches them
    /// with, printed (what decides how many CTAs interleave on an SM); and the assembler's own report (--ptxas-options=-v:
    /// spills, and any wgmma serialization warning) for them. Fails if the second kernel spills registers to local memory.
    /// </summary>
    [Fact]
    public void BackwardKernelResourcesAreReported()
    {
        var (hopper, _) = Backends();
        var output = TestContext.Current.TestOutputHelper;
        var module = hopper.Kernels.Module("flash_attention_hopper.cu");
        foreach (var d in new[] { 64, 128 })
            foreach (var (kernel, threads, keys) in new[] { ("flash_backward_hopper_wg1", 128, 64), ("flash_backward_hopper", 256, 128), ("flash_backward_hopper_v2", 128, 64), ("flash_backward_hopper_v2x", 128, 64) })
            {
                int shared = 1024 + 2 * keys * d * 2 + 4 * 64 * d * 2 + keys * 64 * 2 + 4 * 64 * sizeof(float);
                var r = module.Resources($"{kernel}_bf16_d{d}", threads, shared);
                output?.WriteLine($"{kernel}_bf16_d{d}: {r.Registers} registers, {r.LocalBytes} bytes local, {shared} bytes shared, {r.CtasPerSm} CTAs of {threads} threads per SM");
                if (kernel.EndsWith("v2", StringComparison.Ordinal)) Assert.True(r.LocalBytes == 0, $"{kernel}_bf16_d{d} uses {r.LocalBytes} bytes of local memory (spills)");
                if (kernel.EndsWith("v2x", StringComparison.Ordinal) && d == 64)
                {
                    // variants 7 and 8: the dQ tile's own 16 KB
                    var sep = module.Resources($"{kernel}_bf16_d{d}", threads, shared + 64 * d * 4);
                    output?.WriteLine($"{kernel}_bf16_d{d} with the separate dQ tile: {shared + 64 * d * 4} bytes shared, {sep.CtasPerSm} CTAs per SM");
                }
            }
        string file = "flash_attention_hopper.cu";
        string source = KernelLibrary.ComposedSource(file);
        try
        {
            hopper.Kernels.Compiler.CompileToCubin(source, file, [.. hopper.Kernels.OptionsFor(file), "--ptxas-options=-v"], out string log);
            // ptxas: "Compiling entry function 'NAME'", then its properties (stack, spills), "Used N registers", warnings.
            bool keep = false;
            foreach (var line in log.Split('\n'))
            {
                if (line.Contains("Compiling entry function", StringComparison.Ordinal)) keep = line.Contains("backward", StringComparison.Ordinal);
                if (keep || line.Contains("warning", StringComparison.OrdinalIgnoreCase)) output?.WriteLine(line.TrimEnd());
            }
        }
        // An NVRTC without the option: the report above stands alone. A compilation error of the file fails the test.
        catch (Exception e) when (e is not KernelCompilationException || e.Message.Contains("ptxas-options", StringComparison.Ordinal))
        {
            output?.WriteLine("NVRTC took no --ptxas-options=-v here: " + e.Message);
        }
    }

    [Fact]
    public void EveryKernelOfTheFileCompilesAndLoads()
    {
        // One compilation of the whole file reports all its NVRTC errors at once; then each entry point the host names.
        var (hopper, _) = Backends();
        var module = hopper.Kernels.Module("flash_attention_hopper.cu");
        foreach (var type in new[] { "bf16", "f16" })
            foreach (var d in new[] { 64, 128 })
            {
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_forward_hopper_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_backward_hopper_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_forward_hopper_wg1_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_backward_hopper_wg1_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_backward_hopper_v2_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_backward_hopper_v2x_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_backward_hopper_v2t_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_forward_hopper_{type}_d{d}_t"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_forward_hopper_ws_{type}_d{d}"));
                Assert.NotEqual(IntPtr.Zero, module.Function($"flash_backward_hopper_dq_cast_{type}_d{d}"));
            }
    }

    /// <summary>
    /// The kernel file's wgmma building blocks alone (Cuda/Kernels/hopper_wgmma_probes.cu appended to it): S = Q K^T with both
    /// operands K-major from the swizzled tiles, O = P V with P from registers and V N-major, and the backward's dQ = dS K
    /// with both operands transposed, each against an f64 product of the same bf16 values. fp32 accumulation of exact
    /// bf16 products over at most 128 terms: 1e-5 relative (norm-wise). A failure here names the layout that is wrong.
    /// </summary>
    [Theory]
    [InlineData("qk", 64)]
    [InlineData("qk", 128)]
    [InlineData("pv", 64)]
    [InlineData("pv", 128)]
    [InlineData("dq", 64)]
    public void WgmmaOperandLayoutsAgreeWithTheCpu(string probe, int d)
    {
        var (hopper, _) = Backends();
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        // (rows of A, inner, columns of B) and how each operand is stored: qk: A (64 x d) rows, B (128 x d) rows (B^T);
        // pv: A (64 x 128) rows, B (128 x d) rows; dq: A^T (64 keys x 64 queries) rows, B (64 keys x 64) rows.
        var (m, kdim, n) = probe switch { "qk" => (64, d, 128), "pv" => (64, 128, d), _ => (64, 64, 64) };
        double[] Values(int count) => Enumerable.Range(0, count).Select(_ => Round(rng.NextDouble() * 2 - 1, DType.BF16)).ToArray();
        var a = Values(m * kdim); var bm = Values(kdim * n);
        // stored forms
        double[] aStored = probe == "dq" ? Transpose(a, m, kdim) : a;          // dq: dS^T (keys x queries)
        double[] bStored = probe == "qk" ? Transpose(bm, kdim, n) : bm;         // qk: K (128 x d) = B^T
        var expected = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int x = 0; x < kdim; x++) sum += a[i * kdim + x] * bm[x * n + j];
                expected[i * n + j] = sum;
            }
        string file = "flash_attention_hopper.cu";
        string source = KernelLibrary.ComposedSource(file)
            + "\n#line 1 \"hopper_wgmma_probes.cu\"\n" + File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Cuda", "Kernels", "hopper_wgmma_probes.cu"));
        using var module = hopper.Kernels.Load(source, file);
        string kernel = probe == "dq" ? "probe_dq_bf16" : $"probe_{probe}_bf16_d{d}";
        var ta = Put(hopper, aStored, DType.BF16, aStored.Length); var tb = Put(hopper, bStored, DType.BF16, bStored.Length);
        var tc = hopper.Allocate(new Shape(m * n), DType.F32); hopper.Fill(tc, double.NaN);
        ulong pa = (ulong)hopper.DevicePointer(ta), pb = (ulong)hopper.DevicePointer(tb), pc = (ulong)hopper.DevicePointer(tc);
        void** args = stackalloc void*[] { &pa, &pb, &pc };
        int shared = 1024 + 2 * 128 * 128 * 2;   // the largest probe: two 128-row tiles of D = 128
        var function = module.Function(kernel);
        hopper.CudaDevice.MakeCurrent();
        Tessera.Cuda.Interop.CudaDriver.Check(Tessera.Cuda.Interop.CudaDriver.cuFuncSetAttribute(function,
            Tessera.Cuda.Interop.CudaDriver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared), "cuFuncSetAttribute", kernel);
        Tessera.Cuda.Interop.CudaDriver.Check(Tessera.Cuda.Interop.CudaDriver.cuLaunchKernel(function, 1, 1, 1, 256, 1, 1, (uint)shared,
            hopper.Stream.Handle, args, null), "cuLaunchKernel", kernel);
        var actual = hopper.ToArray<float>(tc).Select(x => (double)x).ToArray();
        foreach (var x in new[] { ta, tb, tc }) x.Storage.Dispose();
        AssertClose(expected, actual, 1e-5, $"wgmma probe {kernel} (seed {seed})");
    }

    private static double[] Transpose(double[] x, int rows, int cols)
    {
        var r = new double[x.Length];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) r[j * rows + i] = x[i * cols + j];
        return r;
    }

    /// <summary>
    /// A prefill chunk against a KV cache with device-side lengths (AttentionForwardCached: sequence b holds starts[b] + T
    /// valid keys of the cache's capacity, its queries at positions starts[b] ..): the kernel reads the lengths itself.
    /// Same bound as the forward above.
    /// </summary>
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void CachedPrefillAgreesWithFlashAttention2AndTheCpuBackend(int d)
    {
        var (hopper, flash2) = Backends();
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        int b = 2, t = 40, capacity = 400, h = 8, kh = 2;
        int[] starts = [100, 333];
        double scale = 1 / Math.Sqrt(d);
        double[] Values(long n) => Enumerable.Range(0, (int)n).Select(_ => Round(rng.NextDouble() * 2 - 1, DType.BF16)).ToArray();
        var q = Values((long)b * t * h * d); var k = Values((long)b * capacity * kh * d); var v = Values((long)b * capacity * kh * d);
        double[] Run(IBackend be, DType dtype)
        {
            Tensor Up(double[] x, params int[] dims) => dtype == DType.F32
                ? be.FromHost<float>(x.Select(y => (float)y).ToArray(), new Shape(dims))
                : Put((CudaBackend)be, x, dtype, dims);
            var tq = Up(q, b, t, h, d); var tk = Up(k, b, capacity, kh, d); var tv = Up(v, b, capacity, kh, d);
            var ts = be.FromHost<int>(starts, new Shape(b));
            var o = be.Allocate(new Shape(b, t, h, d), dtype);
            be.AttentionForwardCached(tq, tk, tv, ts, o, scale);
            return dtype == DType.F32 ? be.ToArray<float>(o).Select(x => (double)x).ToArray() : Get((CudaBackend)be, o);
        }
        hopper.Profiler!.Reset();
        var oH = Run(hopper, DType.BF16);
        Assert.Contains(hopper.Profiler.Totals(), r => r.Name == $"flash_forward_hopper_bf16_d{d}");
        var oF = Run(flash2, DType.BF16);
        var oC = Run(new CpuBackend(2), DType.F32);
        AssertClose(oC, oH, OutTolerance, $"cached prefill D{d} (seed {seed}): Hopper vs the CPU backend");
        AssertClose(oF, oH, OutTolerance, $"cached prefill D{d} (seed {seed}): Hopper vs FlashAttention-2");
    }

    /// <summary>
    /// The forwards that copy K and V by the tensor memory accelerator (the tensor-map and the warp-specialized builds) keep
    /// each sequence's keys in its own tiles: with every K and V value of the second sequence NaN, the first sequence's output
    /// (S = 150, so its second key block reaches 106 rows past its end) keeps the bits of a run without them. A 2D map over
    /// (B S) rows would bring the second sequence's rows into that block, masked, but 0 x NaN is NaN.
    /// </summary>
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void TensorMapForwardsKeepEachSequencesKeysApart(int d)
    {
        Backends();
        int b = 2, t = 150, h = 4, kh = 2, seed = Environment.TickCount;
        var rng = new Random(seed);
        double[] Values(long n) => Enumerable.Range(0, (int)n).Select(_ => Round(rng.NextDouble() * 2 - 1, DType.BF16)).ToArray();
        var q = Values((long)b * t * h * d); var k = Values((long)b * t * kh * d); var v = Values((long)b * t * kh * d);
        var kn = (double[])k.Clone(); var vn = (double[])v.Clone();
        for (long i = (long)t * kh * d; i < kn.Length; i++) kn[i] = vn[i] = double.NaN;
        long first = (long)t * h * d;   // the first sequence's outputs
        foreach (var be in new[] { fixture.ForwardTensorMaps!, fixture.WarpSpecialized! })
        {
            string build = be.Options.HopperAttentionForwardWarpSpecialized ? "warp-specialized" : "tensor-map";
            string kernel = be.Options.HopperAttentionForwardWarpSpecialized ? $"flash_forward_hopper_ws_bf16_d{d}" : $"flash_forward_hopper_bf16_d{d}_t";
            be.Profiler!.Reset();
            var (clean, _) = Forward(be, DType.BF16, q, k, v, b, t, t, h, kh, d, 1 / Math.Sqrt(d));
            var (poisoned, _) = Forward(be, DType.BF16, q, kn, vn, b, t, t, h, kh, d, 1 / Math.Sqrt(d));
            Assert.Contains(be.Profiler.Totals(), r => r.Name == kernel);
            long changed = 0;
            for (long i = 0; i < first; i++) if (!clean[i].Equals(poisoned[i])) changed++;
            Assert.True(changed == 0, $"D{d} (seed {seed}): the {build} forward changed {changed} of the first sequence's outputs when the second's K and V were NaN");
            Assert.Contains(poisoned.Skip((int)first), x => double.IsNaN(x));   // the second sequence's own outputs did see them
        }
    }

    [Fact]
    public void SlidingWindowCallsStayOnFlashAttention2()
    {
        var (hopper, _) = Backends();
        int b = 1, t = 64, h = 2, d = 64;
        var q = hopper.Allocate(new Shape(b, t, h, d), DType.BF16); hopper.Fill(q, 0.5);
        var o = hopper.Allocate(new Shape(b, t, h, d), DType.BF16);
        hopper.Profiler!.Reset();
        hopper.AttentionForward(q, q, q, o, null, 0.125, window: 16);
        var names = hopper.Profiler.Totals().Select(r => r.Name).ToList();
        Assert.Contains("flash_forward_bf16_d64", names);
        Assert.DoesNotContain(names, n => n.StartsWith("flash_forward_hopper", StringComparison.Ordinal));
    }

    private static (double[] O, double[] Lse) Forward(CudaBackend be, DType dtype, double[] q, double[] k, double[] v,
        int b, int t, int s, int h, int kh, int d, double scale)
    {
        var tq = Put(be, q, dtype, b, t, h, d); var tk = Put(be, k, dtype, b, s, kh, d); var tv = Put(be, v, dtype, b, s, kh, d);
        var o = be.Allocate(new Shape(b, t, h, d), dtype); be.Fill(o, double.NaN);
        var lse = be.Allocate(new Shape(b, h, t), DType.F32); be.Fill(lse, double.NaN);
        be.AttentionForward(tq, tk, tv, o, lse, scale);
        double[] outValues = dtype == DType.BF16
            ? be.ToArray<BFloat16>(o).Select(x => (double)x.ToSingle()).ToArray()
            : be.ToArray<Half>(o).Select(x => (double)(float)x).ToArray();
        var lseValues = be.ToArray<float>(lse).Select(x => (double)x).ToArray();
        foreach (var x in new[] { tq, tk, tv, o, lse }) x.Storage.Dispose();
        return (outValues, lseValues);
    }

    private static (double[] Dq, double[] Dk, double[] Dv) Backward(CudaBackend be, DType dtype, double[] q, double[] k, double[] v,
        double[] o, double[] dO, double[] lse, int b, int t, int h, int kh, int d, double scale)
    {
        var tq = Put(be, q, dtype, b, t, h, d); var tk = Put(be, k, dtype, b, t, kh, d); var tv = Put(be, v, dtype, b, t, kh, d);
        var to = Put(be, o, dtype, b, t, h, d); var tdo = Put(be, dO, dtype, b, t, h, d);
        var tl = be.Allocate(new Shape(b, h, t), DType.F32);
        be.CopyFromHost<float>(lse.Select(x => (float)x).ToArray(), tl);
        var dq = be.Allocate(new Shape(b, t, h, d), dtype); be.Fill(dq, double.NaN);
        var dk = be.Allocate(new Shape(b, t, kh, d), dtype); be.Fill(dk, double.NaN);
        var dv = be.Allocate(new Shape(b, t, kh, d), dtype); be.Fill(dv, double.NaN);
        be.AttentionBackward(tq, tk, tv, to, tdo, tl, dq, dk, dv, scale);
        var r = (Get(be, dq), Get(be, dk), Get(be, dv));
        foreach (var x in new[] { tq, tk, tv, to, tdo, tl, dq, dk, dv }) x.Storage.Dispose();
        return r;
    }

    /// <summary>
    /// The attention backward's column sums (<c>columnSums</c>: the QKV product's bias gradient) in the model's layout (dq, dk
    /// and dv views into one (B, T, H + 2K, D) gradient): taken on the way by the second Hopper kernel and the tile cast
    /// (variants 3, 6 and 7, under <see cref="CudaBackendOptions.FusedAttentionBiasGradient"/>; no column-partial kernel may run),
    /// and after the backward for the others (variant 2's per-element dQ, the first kernel) and with the option off. Against
    /// an f64 sum of the gradient the same call wrote, added to a non-zero start (it accumulates). Tolerance 1e-2 norm-wise
    /// over the whole (H + 2K) D vector: the fused sums add fp32 values (dQ's before their rounding to bf16, dv's taken from
    /// dO), the reference the rounded gradient, 2^-9 relative each and independent; the fused path adds nothing for dk,
    /// whose sums are zero up to that rounding (softmax ignores a key bias), so its share of the difference is that noise.
    /// Shapes: T not a multiple of 64 (rows past T must not count), GQA 4 (dO's heads summed by group), D 128 (two partial
    /// rows a query block).
    /// </summary>
    [Theory]
    [InlineData(64, 2, 200, 4, 4, 6, true)]
    [InlineData(64, 2, 300, 8, 2, 3, true)]     // GQA 4, CTAs largest first (their rows remapped)
    [InlineData(128, 2, 256, 4, 2, 6, true)]
    [InlineData(64, 1, 256, 4, 4, 7, true)]     // the v2x build, dQ tile in its own buffer
    [InlineData(64, 2, 200, 4, 4, 2, false)]    // per-element dQ: summed after
    [InlineData(64, 2, 200, 4, 4, 1, false)]    // the first kernel: summed after
    [InlineData(64, 2, 200, 4, 4, 0, false)]    // FusedAttentionBiasGradient = false (the default): summed after
    public void BackwardTakesTheBiasGradientOfTheFusedQkvOnTheWay(int d, int b, int t, int h, int kh, int variant, bool fused)
    {
        Backends();
        using var be = new CudaBackend(0, CudaBackendOptions.Default with
        {
            HopperAttention = true, HopperAttentionBackward = true, HopperBackwardVariant = variant == 0 ? 6 : variant,
            FusedAttentionBiasGradient = variant != 0, ProfileOps = true,
        });
        int seed = Environment.TickCount, w = h + 2 * kh;
        var rng = new Random(seed);
        string where = $"BF16 D{d} B{b} T{t} H{h} K{kh} variant {variant} (seed {seed})";
        double scale = 1 / Math.Sqrt(d);
        double[] Values(long n) => Enumerable.Range(0, (int)n).Select(_ => Round(rng.NextDouble() * 2 - 1, DType.BF16)).ToArray();
        var tqkv = Put(be, Values((long)b * t * w * d), DType.BF16, b, t, w, d);
        var (q, k, v) = (tqkv.Slice(2, 0, h), tqkv.Slice(2, h, kh), tqkv.Slice(2, h + kh, kh));
        var o = be.Allocate(new Shape(b, t, h, d), DType.BF16);
        var lse = be.Allocate(new Shape(b, h, t), DType.F32);
        be.AttentionForward(q, k, v, o, lse, scale);
        var tdo = Put(be, Values((long)b * t * h * d), DType.BF16, b, t, h, d);
        var dqkv = be.Allocate(new Shape(b, t, w, d), DType.BF16);
        var start = Enumerable.Range(0, w * d).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var sums = be.Allocate(new Shape(w * d), DType.F32);
        be.CopyFromHost<float>(start, sums);
        be.Profiler!.Reset();
        be.AttentionBackward(q, k, v, o, tdo, lse, dqkv.Slice(2, 0, h), dqkv.Slice(2, h, kh), dqkv.Slice(2, h + kh, kh), scale, columnSums: sums);
        var names = be.Profiler.Totals().Select(r => r.Name).ToList();
        var g = Get(be, dqkv);
        var got = be.ToArray<float>(sums).Select(x => (double)x).ToArray();
        foreach (var x in new[] { tqkv, o, lse, tdo, dqkv, sums }) x.Storage.Dispose();
        var expected = new double[w * d];
        for (int c = 0; c < w * d; c++) expected[c] = start[c];
        for (long r = 0; r < (long)b * t; r++)
            for (int c = 0; c < w * d; c++) expected[c] += g[r * w * d + c];
        Assert.Contains(names, n => n.StartsWith("flash_backward_hopper", StringComparison.Ordinal));
        if (fused) Assert.DoesNotContain(names, n => n.StartsWith("column_partial", StringComparison.Ordinal));
        else Assert.Contains(names, n => n.StartsWith("column_partial", StringComparison.Ordinal));
        // The sums alone (less the start), so that a large start cannot hide a wrong sum.
        AssertClose(expected.Select((e, i) => e - start[i]).ToArray(), got.Select((e, i) => e - start[i]).ToArray(), 1e-2, $"{where}: column sums");
    }

    private static double[] Get(CudaBackend be, Tensor x) => x.DType == DType.BF16
        ? be.ToArray<BFloat16>(x).Select(y => (double)y.ToSingle()).ToArray()
        : be.ToArray<Half>(x).Select(y => (double)(float)y).ToArray();

    private static Tensor Put(CudaBackend be, double[] values, DType dtype, params int[] dims)
    {
        var t = be.Allocate(new Shape(dims), dtype);
        if (dtype == DType.BF16) be.CopyFromHost<BFloat16>(values.Select(x => BFloat16.FromSingle((float)x)).ToArray(), t);
        else be.CopyFromHost<Half>(values.Select(x => (Half)(float)x).ToArray(), t);
        return t;
    }

    private static double Round(double x, DType dtype) =>
        dtype == DType.BF16 ? BFloat16.FromSingle((float)x).ToSingle() : (float)(Half)(float)x;

    /// <summary>‖actual − expected‖ / ‖expected‖ ≤ tolerance, and no NaN (an element the kernel did not write).</summary>
    private static void AssertClose(double[] expected, double[] actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNaN(actual[i])) Assert.Fail($"{what}: element {i} is NaN (not written), expected {expected[i]}");
            diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
            norm += expected[i] * expected[i];
        }
        double rel = Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
        TestContext.Current.TestOutputHelper?.WriteLine($"{what}: relative error {rel:E2} (bound {tolerance:E1})");
        Assert.True(rel <= tolerance, $"{what}: relative error {rel:E3} exceeds {tolerance:E1}");
    }
}
