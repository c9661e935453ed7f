using Tessera.Cuda.Runtime;
using Tessera.Tensors;

namespace Tessera.Cuda;

// The training products on Tessera's own Hopper kernel (gemm_hopper.cu, CudaBackendOptions.HopperTrainingProducts): an
// nn.Linear's forward and its two gradients' layouts, with a bias, alpha, beta or an addend, on a persistent warp-specialized wgmma
// kernel whose tiles the tensor memory accelerator copies through tensor maps encoded per launch; in clusters of two CTAs
// sharing B's tiles by multicast (CudaBackendOptions.HopperTrainingProductMulticast).
public sealed unsafe partial class CudaBackend
{
    private const int HopperMatMulThreads = 384, HopperMatMulBlockRows = 128, HopperMatMulMinRows = 128;

    /// <summary>
    /// c (M, N) = alpha op(a) op(b) + bias + beta c (or + <paramref name="addend"/>, of c's layout, with beta 1) on gemm_hopper.cu
    /// under <see cref="CudaBackendOptions.HopperTrainingProducts"/>, in the layouts of an nn.Linear's three products: a (M, K)
    /// times b (N, K)^T (nt, the forward), a (M, K) times b (K, N) (nn, the input's gradient), a (K, M)^T times b (K, N) (tn, the
    /// weight's gradient). False, with nothing enqueued, when the call does not fit it (then cuBLASLt runs it): rank 2, 16-bit
    /// of one dtype (c too), not both transposed, at least 128 rows, unit column strides, each operand's contiguous dimension a
    /// multiple of 8 values and its rows 16-byte aligned (the tensor maps' strides and base addresses), c's rows 4-byte aligned
    /// (its pairs' 32-bit stores).
    /// </summary>
    private bool TryHopperMatMul(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias,
        Tensor? addend)
    {
        if (!Options.HopperTrainingProducts || (transposeA && transposeB) || a.Rank != 2 || b.Rank != 2 || c.Rank != 2) return false;
        if (a.DType is not (DType.BF16 or DType.F16) || b.DType != a.DType || c.DType != a.DType || (addend is not null && addend.DType != c.DType)) return false;
        int m = transposeA ? a.Size(1) : a.Size(0), k = transposeA ? a.Size(0) : a.Size(1), n = transposeB ? b.Size(0) : b.Size(1);
        if (m < HopperMatMulMinRows || n == 0 || k == 0 || (transposeB ? b.Size(1) : b.Size(0)) != k || c.Size(0) != m || c.Size(1) != n) return false;
        if (a.Stride(1) != 1 || b.Stride(1) != 1 || c.Stride(1) != 1 || a.Size(1) % 8 != 0 || b.Size(1) % 8 != 0) return false;
        if (a.Stride(0) % 8 != 0 || b.Stride(0) % 8 != 0 || c.Stride(0) % 2 != 0) return false;
        if (a.Stride(0) < a.Size(1) || b.Stride(0) < b.Size(1) || c.Stride(0) < n) return false;   // rows that do not overlap
        ulong pa = Ptr(a), pb = Ptr(b), pc = Ptr(c), pin = addend is null ? pc : Ptr(addend);
        if (pa % 16 != 0 || pb % 16 != 0 || pc % 4 != 0 || pin % 4 != 0 || !BiasFits(bias, a.DType, n) || !UsesHopperTrainingProducts) return false;
        string layout = transposeA ? "tn" : transposeB ? "nt" : "nn";
        // The first call of each shape times this kernel against cuBLASLt and keeps the faster (on 40 % of llama-1b's training
        // shapes this kernel was the faster on an H100, session 44).
        var key = new HopperMatMulKey(a.DType, layout, m, n, k, a.Stride(0), b.Stride(0), c.Stride(0), beta != 0 || addend is not null,
            bias is not null, StagesStores(c.Stride(0), n, pc, pin));
        if (!HopperFormChosen(key, () => TimeHopperMatMul(a, b, c, transposeA, transposeB, alpha, beta, bias, addend, layout, m, n, k))) return false;
        LaunchHopperMatMul(a, b, pc, pin, c.Stride(0), transposeA, transposeB, alpha, addend is not null ? 1.0 : beta, bias, layout, m, n, k,
            addend is not null);
        return true;
    }

    /// <summary>The key of a product shape's timed choice between gemm_hopper.cu and cuBLASLt.</summary>
    /// <remarks>Staged: whether the output goes through the staged stores (the timing's scratch output is 16-byte aligned; a
    /// call whose c is not takes the register stores, 15-20 % slower at K = 2,048, and is timed as its own shape). Ldd: the row
    /// stride of a fourth operand the epilogue reads (the SwiGLU gradient form's gateUp), 0 where there is none.</remarks>
    private readonly record struct HopperMatMulKey(DType DType, string Layout, int M, int N, int K, long Lda, long Ldb, long Ldc, bool Accumulates,
        bool Bias, bool Staged, long Ldd = 0);

    /// <summary>Whether a product's output can take the staged stores: c's rows (and C_in's) 16-byte aligned and N a multiple
    /// of 8 (an H100 wrote the last 16 bytes of a row whole, past an odd N: session 44).</summary>
    private bool StagesStores(long ldc, int n, ulong pc, ulong pin) =>
        Options.HopperTrainingProductStagedStores && ldc % 8 == 0 && n % 8 == 0 && pc % 16 == 0 && pin % 16 == 0;

    private readonly Dictionary<HopperMatMulKey, bool> _hopperChoices = new();

    /// <summary>
    /// Whether a call that fits one of gemm_hopper.cu's forms runs on it: always, unless
    /// <see cref="CudaBackendOptions.TimeHopperTrainingProducts"/>; then as the first call of its shape timed it against the
    /// ops it replaces (<paramref name="time"/>: true when the form is the faster), and never for an untimed shape inside a
    /// graph capture (no timing there).
    /// </summary>
    private bool HopperFormChosen(HopperMatMulKey key, Func<bool> time)
    {
        if (!Options.TimeHopperTrainingProducts) return true;
        if (_hopperChoices.TryGetValue(key, out bool faster)) return faster;
        if (_capturing) return false;
        return _hopperChoices[key] = time();
    }

    /// <summary>Times <paramref name="ours"/> and <paramref name="theirs"/> (<see cref="TimeOnStream"/>); true when ours is at
    /// least 1 % faster. Logged in <see cref="MatMulTuningLog"/> as "<paramref name="what"/>: us against <paramref name="theirName"/>'s us: the choice".</summary>
    private bool TimeAgainst(string what, Action ours, Action theirs, string theirName)
    {
        float mine = TimeOnStream(ours), other = TimeOnStream(theirs);
        bool faster = mine < other * 0.99f;
        _tuningLog.Add($"{what}: {mine * 1000:F1} us against {theirName}'s {other * 1000:F1}: {(faster ? "gemm_hopper" : theirName)}");
        return faster;
    }

    /// <summary>
    /// Times the product on gemm_hopper.cu and on cuBLASLt (a warm-up, then three runs between events, each) with the real
    /// inputs and a scratch output of c's layout, so that an accumulating product leaves c untouched; true when this kernel
    /// is at least 1 % faster. Logged in <see cref="MatMulTuningLog"/>.
    /// </summary>
    private bool TimeHopperMatMul(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias,
        Tensor? addend, string layout, int m, int n, int k)
    {
        long ldc = c.Stride(0);
        var scratch = Allocate(new Shape(m, (int)ldc), c.DType);
        try
        {
            var output = scratch.Slice(1, 0, n);
            ulong pin = addend is not null ? Ptr(addend) : Ptr(c);   // beta's C_in is the real c (or the addend): only the output moves
            return TimeAgainst($"gemm_hopper {layout} {a.DType} {m}x{n}x{k}{(addend is not null ? " +residual" : beta != 0 ? " acc" : "")}",
                () => LaunchHopperMatMul(a, b, Ptr(output), pin, ldc, transposeA, transposeB, alpha, addend is not null ? 1.0 : beta, bias, layout,
                    m, n, k, addend is not null),
                () => MatMulCore(a, b, output, transposeA, transposeB, alpha, beta, bias, MatMulEpilogue.None, null, null, addend), "cuBLASLt");
        }
        finally
        {
            scratch.Storage.Dispose();
        }
    }

    /// <summary>Milliseconds a run of <paramref name="run"/> takes on the stream: a warm-up, then three runs between two events
    /// (the host waits for them).</summary>
    private float TimeOnStream(Action run)
    {
        run();
        using var start = new CudaEvent(CudaDevice);
        using var end = new CudaEvent(CudaDevice);
        start.Record(Stream);
        for (int r = 0; r < 3; r++) run();
        end.Record(Stream);
        end.Synchronize();
        return end.ElapsedSince(start) / 3;
    }

    /// <summary>gemm_hopper.cu's launch for a product that <see cref="TryHopperMatMul"/> found fitting, its output at
    /// <paramref name="pc"/> (rows <paramref name="ldc"/> apart) and beta's C_in at <paramref name="pin"/>.</summary>
    private void LaunchHopperMatMul(Tensor a, Tensor b, ulong pc, ulong pin, long ldc, bool transposeA, bool transposeB, double alpha, double beta,
        Tensor? bias, string layout, int m, int n, int k, bool residual)
    {
        ulong pa = Ptr(a), pb = Ptr(b);
        int columns = Options.HopperTrainingProductColumns, cluster = Options.HopperTrainingProductMulticast ? 2 : 1;
        long units = (long)((m + HopperMatMulBlockRows * cluster - 1) / (HopperMatMulBlockRows * cluster)) * ((n + columns - 1) / columns);
        byte* maps = stackalloc byte[5 * 128 + 64];
        byte* amap = (byte*)(((nint)maps + 63) & ~(nint)63), bmap = amap + 128, cmap = bmap + 128, inmap = cmap + 128, omap = inmap + 128;
        // K-major operands in boxes of their tile's rows (B's shared by a cluster's CTAs) by 64 of K; MN-major ones in boxes of
        // 64 rows of K by 64.
        if (transposeA) EncodeTensorMap(amap, a.DType, pa, m, k, a.Stride(0), 64);
        else EncodeTensorMap(amap, a.DType, pa, k, m, a.Stride(0), HopperMatMulBlockRows);
        if (transposeB) EncodeTensorMap(bmap, a.DType, pb, k, n, b.Stride(0), columns / cluster);
        else EncodeTensorMap(bmap, a.DType, pb, n, k, b.Stride(0), 64);
        // Staged stores: c's 64 x 64 boxes by the tensor memory accelerator (StagesStores); with beta, C_in's boxes come in the
        // same way.
        // 2: with no C_in, each tile's stores deferred into the next tile's main loop (HopperTrainingProductOverlappedEpilogue).
        int staged = !StagesStores(ldc, n, pc, pin) ? 0 : beta == 0 && Options.HopperTrainingProductOverlappedEpilogue ? 2 : 1;
        if (staged != 0)
        {
            EncodeTensorMap(cmap, a.DType, pc, n, m, ldc, 64);
            if (beta != 0) EncodeTensorMap(inmap, a.DType, pin, n, m, ldc, 64);
        }
        ulong pbias = PtrOrNull(bias);
        float al = (float)alpha, be = (float)beta;
        void** args = stackalloc void*[] { amap, bmap, cmap, inmap, omap, &pbias, &pc, &pin, &m, &n, &k, &ldc, &al, &be, &staged };
        string kernel = $"gemm_hopper_{layout}{(cluster > 1 ? "_mc" : "")}_{Suffix(a.DType, "MatMul")}_n{columns}";
        LaunchHopperKernel(kernel, units, cluster, columns, args, $"{m}x{n}x{k}{(residual ? " +residual" : beta != 0 ? " acc" : "")}");
    }

    /// <summary>Launches a gemm_hopper.cu kernel over <paramref name="units"/> units of work (a CTA's tile, or a cluster's
    /// tiles), persistent: as many CTAs as SMs, or as many clusters as run at once (the GPCs decide how many pairs fit). The op
    /// profiler names it by the kernel and <paramref name="shape"/>, as cuBLASLt's products are named by theirs.</summary>
    private void LaunchHopperKernel(string kernel, long units, int cluster, int columns, void** args, string shape)
    {
        string? profileName = Profiler is null ? null : $"{kernel} {shape}";
        if (cluster > 1)
            LaunchCluster("gemm_hopper.cu", kernel, units, (uint)cluster, HopperMatMulThreads, args, HopperMatMulShared(columns), profileName);
        else
            Launch("gemm_hopper.cu", kernel, ((uint)Math.Min(units, CudaDevice.MultiprocessorCount), 1, 1), HopperMatMulThreads, args,
                HopperMatMulShared(columns), dependent: false, profileName: profileName);
    }

    /// <inheritdoc/>
    /// <remarks>On gemm_hopper.cu's SwiGLU form (gemm_hopper_swiglu*: the gate and up sums of 128 outputs in one tile, gateUp's
    /// halves and SiLU(gate) * up stored from the epilogue) under <see cref="CudaBackendOptions.HopperTrainingProducts"/> where
    /// it fits (16-bit, at least 128 rows, F and every row stride a multiple of 8 values, 16-byte aligned rows) and, under
    /// <see cref="CudaBackendOptions.TimeHopperTrainingProducts"/>, where the first call of its shape timed it faster than the
    /// product and the SwiGLU kernel; otherwise those two (<see cref="GateUpSwiGluComposition"/>).</remarks>
    public void GateUpSwiGlu(Tensor x, Tensor gateUpWeight, Tensor gateUp, Tensor activated)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(gateUpWeight);
        ArgumentNullException.ThrowIfNull(gateUp); ArgumentNullException.ThrowIfNull(activated);
        int m = x.Size(0), f = activated.Size(1), k = x.Size(1);
        if (!HopperSwiGluFits(x, gateUpWeight, gateUp, activated)
            || !HopperFormChosen(new HopperMatMulKey(x.DType, "swiglu", m, f, k, x.Stride(0), gateUpWeight.Stride(0), gateUp.Stride(0), false, false, true),
                () => TimeHopperSwiGlu(x, gateUpWeight, gateUp, activated)))
        {
            GateUpSwiGluComposition.Apply(this, x, gateUpWeight, gateUp, activated);
            return;
        }
        LaunchHopperSwiGlu(x, gateUpWeight, Ptr(gateUp), gateUp.Stride(0), Ptr(activated), activated.Stride(0), m, f, k);
    }

    /// <summary>Whether <see cref="GateUpSwiGlu"/> fits gemm_hopper.cu's SwiGLU form here.</summary>
    private bool HopperSwiGluFits(Tensor x, Tensor w, Tensor gu, Tensor act)
    {
        // The SwiGLU form stores through the staged buffers only.
        if (!Options.HopperTrainingProducts || !Options.HopperTrainingProductStagedStores || x.Rank != 2 || w.Rank != 2 || gu.Rank != 2 || act.Rank != 2)
            return false;
        if (x.DType is not (DType.BF16 or DType.F16) || w.DType != x.DType || gu.DType != x.DType || act.DType != x.DType) return false;
        int m = x.Size(0), k = x.Size(1), f = act.Size(1);
        if (m < HopperMatMulMinRows || k == 0 || k % 8 != 0 || f % 8 != 0 || f == 0 || w.Size(0) != 2 * f || w.Size(1) != k
            || gu.Size(0) != m || gu.Size(1) != 2 * f || act.Size(0) != m) return false;
        foreach (var t in new[] { x, w, gu, act })
            if (t.Stride(1) != 1 || t.Stride(0) % 8 != 0 || t.Stride(0) < t.Size(1) || Ptr(t) % 16 != 0) return false;
        return UsesHopperTrainingProducts;
    }

    /// <summary>Times the fused form and the product with the SwiGLU kernel (a warm-up, then three runs between events, each)
    /// on scratch outputs; true when the fused form is at least 1 % faster. Logged in <see cref="MatMulTuningLog"/>.</summary>
    private bool TimeHopperSwiGlu(Tensor x, Tensor w, Tensor gu, Tensor act)
    {
        int m = x.Size(0), f = act.Size(1), k = x.Size(1);
        var guScratch = Allocate(new Shape(m, 2 * f), gu.DType);
        var actScratch = Allocate(new Shape(m, f), act.DType);
        try
        {
            return TimeAgainst($"gemm_hopper swiglu {x.DType} {m}x{2 * f}x{k}", () => LaunchHopperSwiGlu(x, w, Ptr(guScratch), 2 * f, Ptr(actScratch), f, m, f, k),
                () => GateUpSwiGluComposition.Apply(this, x, w, guScratch, actScratch), "the product and SwiGLU");
        }
        finally
        {
            guScratch.Storage.Dispose();
            actScratch.Storage.Dispose();
        }
    }

    /// <summary>gemm_hopper.cu's SwiGLU form for a call <see cref="HopperSwiGluFits"/> accepted: gateUp at <paramref name="pgu"/>
    /// (rows <paramref name="ldgu"/> apart), the activation at <paramref name="pact"/> (rows <paramref name="ldact"/> apart).</summary>
    private void LaunchHopperSwiGlu(Tensor x, Tensor w, ulong pgu, long ldgu, ulong pact, long ldact, int m, int f, int k)
    {
        const int columns = 256;                           // a tile: 128 outputs' gate and up sums
        int cluster = Options.HopperTrainingProductMulticast ? 2 : 1;
        long units = (long)((m + HopperMatMulBlockRows * cluster - 1) / (HopperMatMulBlockRows * cluster)) * ((f + columns / 2 - 1) / (columns / 2));
        byte* maps = stackalloc byte[5 * 128 + 64];
        byte* xmap = (byte*)(((nint)maps + 63) & ~(nint)63), wmap = xmap + 128, gmap = wmap + 128, umap = gmap + 128, amap = umap + 128;
        EncodeTensorMap(xmap, x.DType, Ptr(x), k, m, x.Stride(0), HopperMatMulBlockRows);
        EncodeTensorMap(wmap, x.DType, Ptr(w), k, 2 * f, w.Stride(0), columns / 2);   // the gate rows' and the up rows' boxes
        EncodeTensorMap(gmap, x.DType, pgu, f, m, ldgu, 64);                           // gateUp's first half: the gate values
        EncodeTensorMap(umap, x.DType, pgu + (ulong)f * 2, f, m, ldgu, 64);            // its second half: the up values
        EncodeTensorMap(amap, x.DType, pact, f, m, ldact, 64);
        ulong pbias = 0, pc = pgu;
        long ldc = ldgu;
        float al = 1f, be = 0f;
        int staged = Options.HopperTrainingProductOverlappedEpilogue ? 2 : 1;   // 2: each tile's stores in the next tile's main loop
        void** args = stackalloc void*[] { xmap, wmap, gmap, umap, amap, &pbias, &pc, &pc, &m, &f, &k, &ldc, &al, &be, &staged };
        string kernel = $"gemm_hopper_swiglu{(cluster > 1 ? "_mc" : "")}_{Suffix(x.DType, "GateUpSwiGlu")}_n{columns}";
        LaunchHopperKernel(kernel, units, cluster, columns, args, $"{m}x{2 * f}x{k}");
    }

    /// <inheritdoc/>
    /// <remarks>On gemm_hopper.cu's SwiGLU gradient form (gemm_hopper_dswiglu*: the down product's input gradient with g and u
    /// read into the epilogue, dg and du stored from it; dActivated not written) under
    /// <see cref="CudaBackendOptions.HopperTrainingProducts"/> where it fits (16-bit, at least 128 rows, C, F and every row
    /// stride a multiple of 8 values, 16-byte aligned rows) and, under <see cref="CudaBackendOptions.TimeHopperTrainingProducts"/>,
    /// where the first call of its shape timed it faster than the product and the SwiGLU backward kernel; otherwise those two
    /// (<see cref="DownSwiGluBackwardComposition"/>).</remarks>
    public void DownSwiGluBackward(Tensor dOutput, Tensor downWeight, Tensor gateUp, Tensor dGateUp, Tensor dActivated)
    {
        ArgumentNullException.ThrowIfNull(dOutput); ArgumentNullException.ThrowIfNull(downWeight);
        DownSwiGluBackwardComposition.CheckShapes(gateUp, dGateUp, dActivated);
        int m = dOutput.Size(0), f = dActivated.Size(1), c = dOutput.Size(1);
        if (!HopperSwiGluGradientFits(dOutput, downWeight, gateUp, dGateUp, dActivated)
            || !HopperFormChosen(new HopperMatMulKey(dOutput.DType, "dswiglu", m, f, c, dOutput.Stride(0), downWeight.Stride(0), dGateUp.Stride(0),
                    false, false, true, gateUp.Stride(0)), () => TimeHopperSwiGluGradient(dOutput, downWeight, gateUp, dGateUp, dActivated)))
        {
            DownSwiGluBackwardComposition.Apply(this, dOutput, downWeight, gateUp, dGateUp, dActivated);
            return;
        }
        LaunchHopperSwiGluGradient(dOutput, downWeight, Ptr(gateUp), gateUp.Stride(0), Ptr(dGateUp), dGateUp.Stride(0), m, f, c);
    }

    /// <summary>Whether <see cref="DownSwiGluBackward"/> fits gemm_hopper.cu's SwiGLU gradient form here.</summary>
    private bool HopperSwiGluGradientFits(Tensor dy, Tensor w, Tensor gu, Tensor dgu, Tensor da)
    {
        if (!Options.HopperTrainingProducts || !Options.HopperTrainingProductStagedStores || dy.Rank != 2 || w.Rank != 2) return false;
        if (dy.DType is not (DType.BF16 or DType.F16) || w.DType != dy.DType || gu.DType != dy.DType || dgu.DType != dy.DType || da.DType != dy.DType)
            return false;
        int m = dy.Size(0), c = dy.Size(1), f = da.Size(1);
        if (m < HopperMatMulMinRows || c == 0 || c % 8 != 0 || f == 0 || f % 8 != 0 || w.Size(0) != c || w.Size(1) != f || gu.Size(0) != m) return false;
        foreach (var t in new[] { dy, w, gu, dgu })
            if (t.Stride(1) != 1 || t.Stride(0) % 8 != 0 || t.Stride(0) < t.Size(1) || Ptr(t) % 16 != 0) return false;
        return UsesHopperTrainingProducts;
    }

    /// <summary>Times the fused form and the product with the SwiGLU backward kernel on scratch outputs; true when the fused
    /// form is at least 1 % faster. Logged in <see cref="MatMulTuningLog"/>.</summary>
    private bool TimeHopperSwiGluGradient(Tensor dy, Tensor w, Tensor gu, Tensor dgu, Tensor da)
    {
        int m = dy.Size(0), f = da.Size(1), c = dy.Size(1);
        var dguScratch = Allocate(new Shape(m, 2 * f), dgu.DType);
        try
        {
            return TimeAgainst($"gemm_hopper dswiglu {dy.DType} {m}x{f}x{c}",
                () => LaunchHopperSwiGluGradient(dy, w, Ptr(gu), gu.Stride(0), Ptr(dguScratch), 2 * f, m, f, c),
                () => DownSwiGluBackwardComposition.Apply(this, dy, w, gu, dguScratch, da), "the product and SwiGLU's backward");
        }
        finally
        {
            dguScratch.Storage.Dispose();
        }
    }

    /// <summary>gemm_hopper.cu's SwiGLU gradient form for a call <see cref="HopperSwiGluGradientFits"/> accepted: gateUp at
    /// <paramref name="pgu"/> (rows <paramref name="ldgu"/> apart), dGateUp at <paramref name="pdgu"/> (rows <paramref name="lddgu"/> apart).</summary>
    private void LaunchHopperSwiGluGradient(Tensor dy, Tensor w, ulong pgu, long ldgu, ulong pdgu, long lddgu, int m, int f, int c)
    {
        const int columns = 256;
        int cluster = Options.HopperTrainingProductMulticast ? 2 : 1;
        long units = (long)((m + HopperMatMulBlockRows * cluster - 1) / (HopperMatMulBlockRows * cluster)) * ((f + columns - 1) / columns);
        byte* maps = stackalloc byte[5 * 128 + 64];
        byte* ymap = (byte*)(((nint)maps + 63) & ~(nint)63), wmap = ymap + 128, dgmap = wmap + 128, gumap = dgmap + 128, dumap = gumap + 128;
        EncodeTensorMap(ymap, dy.DType, Ptr(dy), c, m, dy.Stride(0), HopperMatMulBlockRows);
        EncodeTensorMap(wmap, dy.DType, Ptr(w), f, c, w.Stride(0), 64);                       // (C rows of F): MN-major, 64 x 64
        // g and u, dg and du in boxes of 64 rows by 32 columns (the 64-byte swizzle): a chunk's two boxes fill one 8 KB buffer.
        EncodeTensorMap(gumap, dy.DType, pgu, 2 * f, m, ldgu, 64, boxCols: 32);              // gateUp whole: g at f, u at F + f
        EncodeTensorMap(dgmap, dy.DType, pdgu, f, m, lddgu, 64, boxCols: 32);                // dGateUp's first half: dg
        EncodeTensorMap(dumap, dy.DType, pdgu + (ulong)f * 2, f, m, lddgu, 64, boxCols: 32); // its second half: du
        ulong pbias = 0, pc = pdgu;
        long ldc = lddgu;
        float al = 1f, be = 0f;
        int staged = Options.HopperTrainingProductOverlappedEpilogue ? 2 : 1;   // 2: each tile's stores in the next tile's main loop
        void** args = stackalloc void*[] { ymap, wmap, dgmap, gumap, dumap, &pbias, &pc, &pc, &m, &f, &c, &ldc, &al, &be, &staged };
        string kernel = $"gemm_hopper_dswiglu{(cluster > 1 ? "_mc" : "")}_{Suffix(dy.DType, "DownSwiGluBackward")}_n{columns}";
        LaunchHopperKernel(kernel, units, cluster, columns, args, $"{m}x{f}x{c}");
    }

    /// <summary>Dynamic shared memory of gemm_hopper.cu at <paramref name="columns"/> output columns a tile: its stages (4 of
    /// 48 KB at 256 columns, 6 of 32 KB at 128), four 8 KB epilogue buffers, the stages' two barriers each and the buffers'
    /// one each, and 1,024 bytes of slack to align the tiles: 225 KB either way.</summary>
    private static uint HopperMatMulShared(int columns)
    {
        int stages = columns == 256 ? 4 : 6, stage = (HopperMatMulBlockRows + columns) * DecodeGemmTile * 2;
        return (uint)(1024 + stages * (stage + 16) + 4 * (64 * 64 * 2 + 8));
    }

    private bool? _hopperTrainingProducts;
    private string? _hopperTrainingProductsError;

    /// <summary>Whether the training products can run on gemm_hopper.cu here (decided once: the device and the compile).</summary>
    private bool UsesHopperTrainingProducts => _hopperTrainingProducts ??=
        CudaDevice.ComputeCapability == (9, 0) && TryCompile("gemm_hopper.cu", out _hopperTrainingProductsError);

    /// <summary>
    /// Why the products run on cuBLASLt although <see cref="CudaBackendOptions.HopperTrainingProducts"/> asks for gemm_hopper.cu:
    /// not compute capability 9.0, or NVRTC's log when the file does not compile for sm_90a; null when it runs (or was not
    /// asked for).
    /// </summary>
    public string? HopperTrainingProductsUnavailableReason =>
        !Options.HopperTrainingProducts || UsesHopperTrainingProducts ? null
        : CudaDevice.ComputeCapability != (9, 0) ? $"the Hopper training products need compute capability 9.0; this device is {CudaDevice.Architecture}"
        : _hopperTrainingProductsError;
}
