using System.Runtime.InteropServices;
using Tessera.Tensors;

namespace Tessera.Cuda;

// Decoding's products (at most 4 rows of x): the persistent matrix-vector kernels of gemv.cu, which stream each weight
// once, with RMSNorm fused in front and the residual add, SwiGLU or RoPE and the KV-cache append fused behind.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Most rows of x that the matrix-vector kernels take; larger products go to cuBLASLt.</summary>
    private const int GemvMaxRows = 4;

    /// <summary>
    /// A matrix-vector grid: <see cref="CudaBackendOptions.MatrixVectorCtasPerSm"/> CTAs of 8 warps per SM (two by default,
    /// the kernels' launch bounds, so both are resident), fewer when the rows would leave warps idle.
    /// </summary>
    private uint GemvGrid(int outputs) =>
        (uint)Math.Max(1, Math.Min((outputs + 7) / 8, CudaDevice.MultiprocessorCount * Options.MatrixVectorCtasPerSm));

    /// <summary>
    /// c (M, N) = alpha x (M, K) W^T + bias + beta c with M &lt;= 4 and W (N, K) an nn.Linear weight, optionally RMS-normalizing
    /// x first: the persistent kernel that streams W once. False, with nothing enqueued, when the call does not fit it
    /// (then cuBLASLt runs it). <see cref="CudaBackendOptions.MatrixVectorKernels"/> off sends every product to cuBLASLt.
    /// </summary>
    private bool TryGemv(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias,
        RmsNormPrologue? norm = null)
    {
        if (transposeA || !transposeB || b.Rank != 2 || c.Rank != 2 || !FloatGemvFits(a, norm, b)) return false;
        int m = a.Size(0), k = a.Size(1), n = b.Size(0);
        var dtype = a.DType;
        if (c.Size(0) != m || c.Size(1) != n || n == 0 || c.DType != dtype || (c.Stride(1) != 1 && n > 1)) return false;
        if (!BiasFits(bias, dtype, n)) return false;
        ulong px = Ptr(a), pw = Ptr(b), py = Ptr(c), pb = PtrOrNull(bias), pn = norm is { } r ? Ptr(r.Weight) : 0;
        float eps = norm is { } r2 ? (float)r2.Epsilon : 0f;
        int unit = norm is { UnitOffset: true } ? 1 : 0;
        long ldx = a.Stride(0), ldw = b.Stride(0), ldy = c.Stride(0);
        float al = (float)alpha, be = (float)beta;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pw, &pb, &py, &n, &k, &ldx, &ldw, &ldy, &al, &be, &pn, &eps, &unit, &early };
        Launch("gemv.cu", $"gemv_stream_{Suffix(dtype, "MatMul")}_m{m}", (GemvGrid(n), 1, 1), 256, args, GemvShared(m, k, dtype), dependent: true);
        return true;
    }

    /// <summary>x (M, K) staged in shared memory, once per CTA.</summary>
    private static uint GemvShared(int m, int k, DType dtype) => (uint)((long)m * k * dtype.SizeInBytes());

    private static bool BiasFits(Tensor? bias, DType dtype, int n) =>
        bias is null || (bias.DType == dtype && bias.IsContiguous && bias.NumElements == n);

    /// <summary>
    /// Whether x (M, K) with M &lt;= 4 and the (·, K) weights suit the matrix-vector kernels: one floating-point dtype, 16-byte
    /// aligned rows, K a multiple of 16 bytes, x fitting shared memory, a contiguous norm weight (K) when there is a norm, and
    /// no unit offset on it (the quantized forms apply plain norms only).
    /// </summary>
    private bool GemvFits(Tensor x, RmsNormPrologue? norm, params Tensor[] weights) => !(norm is { UnitOffset: true }) && FloatGemvFits(x, norm, weights);

    /// <summary>The same test for the float-weight forms (F32, BF16, F16 weights), whose staging also applies a unit-offset
    /// norm (Gemma's).</summary>
    private bool FloatGemvFits(Tensor x, RmsNormPrologue? norm, params Tensor[] weights)
    {
        if (!GemvInputFits(x)) return false;
        int k = x.Size(1);
        var dtype = x.DType;
        int vec = 16 / dtype.SizeInBytes();
        foreach (var w in weights)
            if (w.Rank != 2 || w.DType != dtype || w.Size(1) != k || w.Stride(1) != 1 || w.Stride(0) % vec != 0 || Ptr(w) % 16 != 0) return false;
        if (norm is { } r && (r.Weight.DType != dtype || !r.Weight.IsContiguous || r.Weight.NumElements != k || Ptr(r.Weight) % 16 != 0)) return false;
        return true;
    }

    /// <summary>
    /// Whether x (M, K) suits the matrix-vector kernels' staging, whatever the weights: <see cref="CudaBackendOptions.MatrixVectorKernels"/>
    /// on, 1 to 4 rows of F32, BF16 or F16, 16-byte aligned rows, K a multiple of 16 bytes, x fitting shared memory.
    /// </summary>
    private bool GemvInputFits(Tensor x)
    {
        if (!Options.MatrixVectorKernels || x.Rank != 2) return false;
        int m = x.Size(0), k = x.Size(1);
        var dtype = x.DType;
        if (m < 1 || m > GemvMaxRows || k == 0 || dtype is not (DType.F32 or DType.BF16 or DType.F16)) return false;
        int vec = 16 / dtype.SizeInBytes();
        if (x.Stride(1) != 1 || k % vec != 0 || (m > 1 && x.Stride(0) % vec != 0) || Ptr(x) % 16 != 0) return false;
        return (long)m * k * dtype.SizeInBytes() <= CudaDevice.MaxSharedMemoryPerBlockOptIn;
    }

    /// <inheritdoc/>
    /// <remarks>For at most 4 rows of x, one kernel streams the gate and up rows together (gemv.cu), normalizing x on the way
    /// when asked; for 5 to 64 under <see cref="CudaBackendOptions.DecodeProducts"/>, the decode-product kernel's SwiGLU form (the
    /// norm on the way); otherwise the norm, then one cuBLASLt product over [gate; up] when the two weights are adjacent in their
    /// storage (two products when not) into scratch, and the SwiGLU kernel on the halves.</remarks>
    public void MatMulSwiGlu(Tensor x, Tensor gateWeight, Tensor upWeight, Tensor output, Tensor? gateBias = null, Tensor? upBias = null,
        RmsNormPrologue? norm = null, bool geluGate = false)
    {
        const string op = nameof(MatMulSwiGlu);
        if (x.Rank != 2 || gateWeight.Rank != 2 || upWeight.Shape != gateWeight.Shape || output.Rank != 2
            || gateWeight.Size(1) != x.Size(1) || output.Size(0) != x.Size(0) || output.Size(1) != gateWeight.Size(0))
            throw new ArgumentException($"CudaBackend.{op}: x {x.Shape}, gate {gateWeight.Shape}, up {upWeight.Shape}, output {output.Shape} do not fit (N, C), (F, C), (F, C), (N, F)");
        RequireContiguous(op, "output", output);
        int m = x.Size(0), k = x.Size(1), f = gateWeight.Size(0);
        var dtype = x.DType;
        // One row stride serves both weights in the kernel.
        bool fused = FloatGemvFits(x, norm, gateWeight, upWeight) && upWeight.Stride(0) == gateWeight.Stride(0) && output.DType == dtype
            && BiasFits(gateBias, dtype, f) && BiasFits(upBias, dtype, f);
        if (!fused && !geluGate && TryDecodeGemmSwiGlu(x, gateWeight, upWeight, output, gateBias, upBias, norm)) return;
        if (!fused && !geluGate && gateBias is null && upBias is null && Stacked(gateWeight, upWeight) is { } both && output.DType == dtype)
        {
            // Gate and up adjacent in their storage (the parameter arena lays them out so): one product at N = 2F reads
            // the weights in one pass and launches once, then SwiGLU reads the two halves in place (GeGLU's GELU kernel takes
            // whole tensors, so it runs the two products below).
            Tensor? h = norm is { } r ? NormalizedScratch(x, r) : null;
            var gu = ScratchTensor(new Shape(m, 2 * f), dtype);                              // (M, 2F): [g | u]
            MatMul(h ?? x, both, gu, transposeB: true);
            SwiGluForward(gu.Slice(1, 0, f), gu.Slice(1, f, f), output);
            gu.Storage.Dispose();
            h?.Storage.Dispose();
            return;
        }
        if (!fused)
        {
            Tensor? h = norm is { } r ? NormalizedScratch(x, r) : null;
            var gate = ScratchTensor(output.Shape, dtype);
            var up = ScratchTensor(output.Shape, dtype);
            MatMul(h ?? x, gateWeight, gate, transposeB: true, bias: gateBias);
            MatMul(h ?? x, upWeight, up, transposeB: true, bias: upBias);
            GatedActivation(gate, up, output, geluGate);
            gate.Storage.Dispose();
            up.Storage.Dispose();
            h?.Storage.Dispose();
            return;
        }
        ulong px = Ptr(x), pg = Ptr(gateWeight), pu = Ptr(upWeight), pbg = PtrOrNull(gateBias), pbu = PtrOrNull(upBias), po = Ptr(output);
        ulong pn = norm is { } n ? Ptr(n.Weight) : 0;
        float eps = norm is { } n2 ? (float)n2.Epsilon : 0f;
        int unit = norm is { UnitOffset: true } ? 1 : 0, gelu = geluGate ? 1 : 0;
        long ldx = x.Stride(0), ldw = gateWeight.Stride(0), ldo = f;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pg, &pu, &pbg, &pbu, &po, &f, &k, &ldx, &ldw, &ldo, &pn, &eps, &unit, &gelu, &early };
        Launch("gemv.cu", $"gemv_stream_swiglu_{Suffix(dtype, op)}_m{m}", (GemvGrid(f), 1, 1), 256, args, GemvShared(m, k, dtype), dependent: true);
    }

    /// <summary>output = SiLU(gate) * up, or with <paramref name="geluGate"/> GELU(gate) * up as two kernels (the gate's GELU in
    /// place, then the product), the composition <see cref="IBackend.MatMulSwiGlu"/> states; gate and up are the contiguous
    /// scratch of the two products under a GELU gate.</summary>
    private void GatedActivation(Tensor gate, Tensor up, Tensor output, bool geluGate)
    {
        if (!geluGate)
        {
            SwiGluForward(gate, up, output);
            return;
        }
        GeluForward(gate, gate);
        Multiply(gate, up, output);
    }

    /// <summary>The (2F, C) matrix [a; b] when b follows a in their storage (both contiguous, of one shape), else null.</summary>
    private static Tensor? Stacked(Tensor a, Tensor b)
    {
        if (!ReferenceEquals(a.Storage, b.Storage) || !a.IsContiguous || !b.IsContiguous || a.Shape != b.Shape || a.Rank != 2
            || b.Offset != a.Offset + a.NumElements) return null;
        var shape = new Shape(2 * a.Size(0), a.Size(1));
        return new Tensor(a.Storage, shape, shape.ContiguousStrides(), a.Offset);
    }

    /// <inheritdoc/>
    /// <remarks>For at most 4 rows of x, the matrix-vector kernel normalizes x while staging it; for 5 to 64 under
    /// <see cref="CudaBackendOptions.DecodeProducts"/>, the decode-product kernel normalizes x's fragments; otherwise the RMSNorm kernel
    /// into scratch, then the product.</remarks>
    public void RmsNormMatMul(Tensor x, RmsNormPrologue norm, Tensor weight, Tensor output, Tensor? bias = null)
    {
        if (TryGemv(x, weight, output, false, true, 1.0, 0.0, bias, norm) || TryDecodeGemmNormalized(x, norm, weight, output, bias)) return;
        var h = NormalizedScratch(x, norm);
        MatMul(h, weight, output, transposeB: true, bias: bias);
        h.Storage.Dispose();
    }

    /// <summary>The ROPE epilogue's arguments (gemv.cu's GemvRope&lt;T&gt;, field for field).</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct GemvRopeArgs
    {
        public ulong Cache, Starts, Slots;   // Slots: 0 for a dense cache
        public int Tokens, QueryHeads, KvHeads, HeadSize;
        public long CacheB, CacheS, CacheH;
        public RopeArgs Frequencies;
    }

    /// <inheritdoc/>
    /// <remarks>For at most 4 rows of x, one matrix-vector kernel: each warp streams the two rows of a head that one rotation
    /// reads ((i, i + D/2), or (i, i + R/2) under partial rotary) together and rotates and appends the pair as it writes it (gemv.cu, ROPE epilogue); otherwise the product, then
    /// <see cref="RopeAndAppend"/>.</remarks>
    public void MatMulRopeAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        const string op = nameof(MatMulRopeAppend);
        if (weight.Rank != 2) throw new ArgumentException($"CudaBackend.{op}: weight {weight.Shape} must be ((H+2K)·D, C)");
        var flat = DenseQkvRows(op, x, weight.Shape, qkv);
        var dtype = x.DType;
        if (!(FloatGemvFits(x, norm, weight) && BiasFits(bias, dtype, weight.Size(0)) && StreamRopeFits(qkv, queryHeads, keysAndValues, dtype)))
        {
            if (norm is { } r) RmsNormMatMul(x, r, weight, flat, bias);
            else MatMul(x, weight, flat, transposeB: true, bias: bias);
            RopeAndAppend(qkv, queryHeads, keysAndValues, startPositions, frequencies);
            return;
        }
        var rope = DenseRopeArgs(op, qkv, queryHeads, keysAndValues, startPositions, frequencies);
        int m = x.Size(0), k = x.Size(1), pairs = weight.Size(0) / 2;
        ulong px = Ptr(x), pw = Ptr(weight), pb = PtrOrNull(bias), py = Ptr(qkv), pn = norm is { } n ? Ptr(n.Weight) : 0;
        float eps = norm is { } n2 ? (float)n2.Epsilon : 0f;
        int unit = norm is { UnitOffset: true } ? 1 : 0;
        long ldx = x.Stride(0), ldw = weight.Stride(0), ldy = weight.Size(0);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pw, &pb, &py, &pairs, &k, &ldx, &ldw, &ldy, &pn, &eps, &unit, &rope, &early };
        Launch("gemv.cu", $"gemv_stream_rope_{Suffix(dtype, op)}_m{m}", (GemvGrid(pairs), 1, 1), 256, args, GemvShared(m, k, dtype), dependent: true);
    }

    /// <summary>qkv (B, T, H+2K, D), contiguous, as the (B·T, (H+2K)·D) rows of x (B·T, C) times a weight of shape <paramref name="weight"/> ((H+2K)·D, C).</summary>
    private Tensor DenseQkvRows(string op, Tensor x, Shape weight, Tensor qkv)
    {
        if (qkv.Rank != 4 || x.Rank != 2 || (long)qkv.Size(0) * qkv.Size(1) != x.Size(0)
            || (long)qkv.Size(2) * qkv.Size(3) != weight[0] || weight[1] != x.Size(1))
            throw new ArgumentException($"CudaBackend.{op}: x {x.Shape}, weight {weight} and qkv {qkv.Shape} do not fit (B·T, C), ((H+2K)·D, C), (B, T, H+2K, D)");
        RequireContiguous(op, "qkv", qkv);
        return qkv.Reshape(x.Size(0), weight[0]);
    }

    /// <summary>Whether qkv (B, T, H+2K, D) and the dense cache (B, S, 2K, D), both of <paramref name="dtype"/>, suit a stream's ROPE epilogue: D even, the heads and sizes consistent, T positions within S.</summary>
    private static bool StreamRopeFits(Tensor qkv, int queryHeads, Tensor keysAndValues, DType dtype)
    {
        int b = qkv.Size(0), t = qkv.Size(1), d = qkv.Size(3);
        return keysAndValues.Rank == 4 && d % 2 == 0 && qkv.DType == dtype && keysAndValues.DType == dtype && queryHeads > 0
            && keysAndValues.Size(2) % 2 == 0 && qkv.Size(2) == queryHeads + keysAndValues.Size(2) && keysAndValues.Size(0) == b
            && keysAndValues.Size(3) == d && t <= keysAndValues.Size(1);
    }

    /// <summary>The ROPE epilogue's arguments for a dense cache: row b T + t at startPositions[b] + t.</summary>
    private GemvRopeArgs DenseRopeArgs(string op, Tensor qkv, int queryHeads, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        var cs = Strides3.Of(op, "keysAndValues", keysAndValues);
        RequirePositions(op, startPositions, qkv.Size(0));
        int d = qkv.Size(3);
        return new GemvRopeArgs
        {
            Cache = Ptr(keysAndValues), Starts = Ptr(startPositions), Tokens = qkv.Size(1), QueryHeads = queryHeads,
            KvHeads = keysAndValues.Size(2) / 2, HeadSize = d, CacheB = cs.B, CacheS = cs.T, CacheH = cs.H, Frequencies = RopeArgsFor(frequencies, d),
        };
    }
}
