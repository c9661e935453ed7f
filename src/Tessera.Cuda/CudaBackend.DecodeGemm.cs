using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda;

// Decode-size products (decode_gemm_hopper.cu on compute capability 9.0, decode_gemm.cu elsewhere): 5 to 64 rows of x times
// an nn.Linear weight on tensor cores, launched dependent on their predecessor with their first weight loads ahead of the
// wait, as gemv.cu's kernels are at 1-4 rows, K's slices of a row block one thread-block cluster; their SwiGLU form, and
// RMSNorm applied on the way (CudaBackendOptions.DecodeProducts); on the wgmma kernel, a tensor-map form of both
// (CudaBackendOptions.DecodeProductTensorMaps: the tiles copied by the tensor memory accelerator, tensor maps encoded per launch).
// The int8-weight form of decode_gemm.cu is launched from CudaBackend.Quantized.cs (TryDecodeGemmQuantized), with these constants.
public sealed unsafe partial class CudaBackend
{
    private const int DecodeGemmMaxRows = 64, DecodeGemmBlockRows = 128, DecodeGemmTile = 64, DecodeGemmStages = 4, DecodeGemmThreads = 128,
        DecodeGemmMaxSlices = 8;   // a cluster's CTAs (the portable most)

    /// <summary>
    /// c (M, N) = alpha x (M, K) W^T + bias + beta c with 5 &lt;= M &lt;= 64 and W (N, K) an nn.Linear weight, on a decode-product
    /// kernel (<see cref="DecodeGemmKernel"/>) under <see cref="CudaBackendOptions.DecodeProducts"/>, x RMS-normalized on the way when <paramref name="norm"/> is given;
    /// false, with nothing enqueued, when the call does not fit it (then cuBLASLt runs it): 16-bit floats of one dtype, K a
    /// multiple of 64, unit column strides, 16-byte aligned rows. Under <see cref="CudaBackendOptions.DecodeProductTensorMaps"/>
    /// on the wgmma kernel, the tensor-map form (decode_gemm_hopper_tma_*) with W's and x's maps passed by value.
    /// </summary>
    private bool TryDecodeGemm(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias,
        RmsNormPrologue? norm = null)
    {
        if (transposeA || !transposeB || c.Rank != 2 || !DecodeGemmFits(a, norm, b) || c.DType != a.DType || c.Size(0) != a.Size(0)
            || c.Size(1) != b.Size(0) || c.Stride(1) != 1 || !BiasFits(bias, a.DType, b.Size(0))) return false;
        int m = a.Size(0), k = a.Size(1), n = b.Size(0), mt = DecodeGemmTiles(m), blocks = (n + DecodeGemmBlockRows - 1) / DecodeGemmBlockRows;
        var kernel = DecodeGemmKernel(mt);
        int slices = DecodeGemmSlices(blocks, k / DecodeGemmTile);
        ulong px = Ptr(a), pw = Ptr(b), pb = PtrOrNull(bias), py = Ptr(c);
        long ldx = a.Stride(0), ldw = b.Stride(0), ldy = c.Stride(0);
        float al = (float)alpha, be = (float)beta, eps = norm is { } r ? (float)r.Epsilon : 0f;
        ulong pn = norm is { } r2 ? Ptr(r2.Weight) : 0;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        if (Options.DecodeProductTensorMaps && UsesHopperDecodeProducts)
        {
            // The tensor-map form: W in boxes of 128 rows by 64 columns, x in boxes of its 8 MT (padded) rows by 64, both swizzled
            // as the stages hold them; each 128-byte map 64-byte aligned, passed by value.
            byte* maps = stackalloc byte[2 * 128 + 64];
            byte* wmap = (byte*)(((nint)maps + 63) & ~(nint)63), xmap = wmap + 128;
            EncodeTensorMap(wmap, a.DType, pw, k, n, ldw, DecodeGemmBlockRows);
            EncodeTensorMap(xmap, a.DType, px, k, m, ldx, 8 * mt);
            void** mapped = stackalloc void*[] { &px, &pw, &pb, &py, &m, &n, &k, &ldx, &ldw, &ldy, &al, &be, &early, &pn, &eps, wmap, xmap };
            Launch(kernel.File, $"{kernel.Prefix}_tma_{Suffix(a.DType, "MatMul")}_m{mt}", ((uint)slices, (uint)blocks, 1), DecodeGemmThreads,
                mapped, kernel.Shared, dependent: true, clusterX: (uint)slices);
            return true;
        }
        void** args = stackalloc void*[] { &px, &pw, &pb, &py, &m, &n, &k, &ldx, &ldw, &ldy, &al, &be, &early, &pn, &eps };
        Launch(kernel.File, $"{kernel.Prefix}_{Suffix(a.DType, "MatMul")}_m{mt}", ((uint)slices, (uint)blocks, 1), DecodeGemmThreads,
            args, kernel.Shared, dependent: true, clusterX: (uint)slices);
        return true;
    }

    /// <summary>
    /// Writes at <paramref name="map"/> (128 bytes, 64-byte aligned) the tensor map of a row-major 16-bit matrix of
    /// <paramref name="rows"/> rows of <paramref name="cols"/> values, <paramref name="ld"/> values apart, read in boxes of
    /// <paramref name="boxRows"/> rows by <paramref name="boxCols"/> values: 64 (128 bytes) in the 128-byte swizzle, or 32 (64
    /// bytes) in the 64-byte swizzle; values past the matrix read as zeros. With <paramref name="planes"/> &gt; 0 the map is 3D:
    /// that many such matrices, <paramref name="planeStride"/> values apart, each box one plane deep (a box's rows past its
    /// plane's last read as zeros, not as the next plane's).
    /// </summary>
    private static void EncodeTensorMap(byte* map, DType dtype, ulong address, int cols, int rows, long ld, int boxRows, int boxCols = DecodeGemmTile,
        int planes = 0, long planeStride = 0)
    {
        int swizzle = boxCols switch
        {
            64 => CU_TENSOR_MAP_SWIZZLE_128B,
            32 => CU_TENSOR_MAP_SWIZZLE_64B,
            _ => throw new ArgumentOutOfRangeException(nameof(boxCols), boxCols, "a box row is 64 values (the 128-byte swizzle) or 32 (the 64-byte one)"),
        };
        int rank = planes > 0 ? 3 : 2;
        ulong* dims = stackalloc ulong[] { (ulong)cols, (ulong)rows, (ulong)planes };
        ulong* strides = stackalloc ulong[] { (ulong)ld * 2, (ulong)planeStride * 2 };
        uint* box = stackalloc uint[] { (uint)boxCols, (uint)boxRows, 1 };
        uint* elementStrides = stackalloc uint[] { 1, 1, 1 };
        int type = dtype == DType.BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
        Check(cuTensorMapEncodeTiled(map, type, (uint)rank, address, dims, strides, box, elementStrides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
            "cuTensorMapEncodeTiled", (planes > 0 ? $"{planes} x " : "") + $"{rows} x {cols} {dtype}, row stride {ld}"
                + (planes > 0 ? $", plane stride {planeStride}" : "") + $", boxes of {boxRows} x {boxCols}");
    }

    /// <summary>
    /// output (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu) with 5 &lt;= M &lt;= 64 on the decode-product kernel's SwiGLU form (an output's
    /// gate and up sums in one thread's registers; one launch, no (M, 2F) scratch), x RMS-normalized on the way when <paramref name="norm"/>
    /// is given; false, with nothing enqueued, when the call does not fit it. Under <see cref="CudaBackendOptions.DecodeProductTensorMaps"/>
    /// on the wgmma kernel, its tensor-map form (decode_gemm_hopper_tma_swiglu_*: the gate's, the up weight's and x's maps).
    /// </summary>
    private bool TryDecodeGemmSwiGlu(Tensor x, Tensor gateWeight, Tensor upWeight, Tensor output, Tensor? gateBias, Tensor? upBias, RmsNormPrologue? norm)
    {
        if (!DecodeGemmFits(x, norm, gateWeight, upWeight) || upWeight.Stride(0) != gateWeight.Stride(0) || output.DType != x.DType
            || !output.IsContiguous || !BiasFits(gateBias, x.DType, gateWeight.Size(0)) || !BiasFits(upBias, x.DType, gateWeight.Size(0))) return false;
        int m = x.Size(0), k = x.Size(1), f = gateWeight.Size(0), mt = DecodeGemmTiles(m), blocks = (f + DecodeGemmBlockRows / 2 - 1) / (DecodeGemmBlockRows / 2);
        var kernel = DecodeGemmKernel(mt);
        int slices = DecodeGemmSlices(blocks, k / DecodeGemmTile);
        ulong px = Ptr(x), pg = Ptr(gateWeight), pu = Ptr(upWeight), pbg = PtrOrNull(gateBias), pbu = PtrOrNull(upBias), po = Ptr(output);
        ulong pn = norm is { } r ? Ptr(r.Weight) : 0;
        float eps = norm is { } r2 ? (float)r2.Epsilon : 0f;
        long ldx = x.Stride(0), ldw = gateWeight.Stride(0), ldo = f;
        int early = EarlyWeights ? 1 : 0;
        if (Options.DecodeProductTensorMaps && UsesHopperDecodeProducts)
        {
            // The tensor-map form: the gate and up weights each in boxes of 64 rows (a CTA's outputs), x as the plain form's.
            byte* maps = stackalloc byte[3 * 128 + 64];
            byte* gmap = (byte*)(((nint)maps + 63) & ~(nint)63), umap = gmap + 128, xmap = umap + 128;
            EncodeTensorMap(gmap, x.DType, pg, k, f, ldw, DecodeGemmBlockRows / 2);
            EncodeTensorMap(umap, x.DType, pu, k, f, ldw, DecodeGemmBlockRows / 2);
            EncodeTensorMap(xmap, x.DType, px, k, m, ldx, 8 * mt);
            void** mapped = stackalloc void*[] { &px, &pg, &pu, &pbg, &pbu, &po, &m, &f, &k, &ldx, &ldw, &ldo, &early, &pn, &eps, gmap, umap, xmap };
            Launch(kernel.File, $"{kernel.Prefix}_tma_swiglu_{Suffix(x.DType, "MatMulSwiGlu")}_m{mt}", ((uint)slices, (uint)blocks, 1),
                DecodeGemmThreads, mapped, kernel.Shared, dependent: true, clusterX: (uint)slices);
            return true;
        }
        void** args = stackalloc void*[] { &px, &pg, &pu, &pbg, &pbu, &po, &m, &f, &k, &ldx, &ldw, &ldo, &early, &pn, &eps };
        Launch(kernel.File, $"{kernel.Prefix}_swiglu_{Suffix(x.DType, "MatMulSwiGlu")}_m{mt}", ((uint)slices, (uint)blocks, 1),
            DecodeGemmThreads, args, kernel.Shared, dependent: true, clusterX: (uint)slices);
        return true;
    }

    /// <summary>
    /// output (M, N) = RMSNorm(x) W^T + bias with 5 &lt;= M &lt;= 64 on decode_gemm.cu, the norm applied on the way (no normalized
    /// copy of x, no norm launch); false, with nothing enqueued, when the call does not fit it.
    /// </summary>
    private bool TryDecodeGemmNormalized(Tensor x, RmsNormPrologue norm, Tensor weight, Tensor output, Tensor? bias) =>
        TryDecodeGemm(x, weight, output, false, true, 1.0, 0.0, bias, norm);

    /// <summary>
    /// Whether x (M, K) and the (·, K) weights suit decode_gemm.cu under <see cref="CudaBackendOptions.DecodeProducts"/>:
    /// 5 to 64 rows, bf16 or f16 throughout, K a multiple of 64, unit column strides, 16-byte aligned rows; a norm's weight
    /// contiguous, of x's dtype, K long, 16-byte aligned (the kernels copy it 16 bytes at a time, or in bulk).
    /// </summary>
    private bool DecodeGemmFits(Tensor x, RmsNormPrologue? norm, params Tensor[] weights)
    {
        if (!Options.DecodeProducts || x.Rank != 2) return false;
        int m = x.Size(0), k = x.Size(1);
        if (m <= GemvMaxRows || m > DecodeGemmMaxRows || k % DecodeGemmTile != 0 || x.DType is not (DType.BF16 or DType.F16)) return false;
        if (x.Stride(1) != 1 || x.Stride(0) % 8 != 0 || Ptr(x) % 16 != 0) return false;
        // A unit-offset norm (Gemma) goes to the norm kernel first: these kernels apply plain norms.
        if (norm is { } r && (r.UnitOffset || r.Weight.DType != x.DType || !r.Weight.IsContiguous || r.Weight.NumElements != k || Ptr(r.Weight) % 16 != 0)) return false;
        foreach (var w in weights)
            if (w.Rank != 2 || w.Size(0) == 0 || w.DType != x.DType || w.Size(1) != k || w.Stride(1) != 1 || w.Stride(0) % 8 != 0 || Ptr(w) % 16 != 0) return false;
        return true;
    }

    /// <summary>x's rows as the kernel's MT (n8 tiles, in pairs): 16, 32 or 64 rows.</summary>
    private static int DecodeGemmTiles(int m) => m <= 16 ? 2 : m <= 32 ? 4 : 8;

    /// <summary>
    /// The decode products' kernel for x of 8 <paramref name="mt"/> rows: its file, name prefix and dynamic shared memory.
    /// decode_gemm_hopper.cu on a compute capability 9.0 device under <see cref="CudaBackendOptions.HopperDecodeProducts"/>
    /// (when it compiles for sm_90a; 1,024-byte aligned tiles with 1,024 bytes of slack), else decode_gemm.cu; both 4 stages of
    /// 64 columns, a stage holding 128 W rows, 8 MT x rows and the norm weight: 97-101 KB in all at 64 rows of x (two CTAs an SM).
    /// </summary>
    private (string File, string Prefix, uint Shared) DecodeGemmKernel(int mt) => UsesHopperDecodeProducts
        ? ("decode_gemm_hopper.cu", "decode_gemm_hopper", (uint)(1024 + DecodeGemmStages * ((DecodeGemmBlockRows + 8 * mt) * DecodeGemmTile * 2 + 1024)))
        : ("decode_gemm.cu", "decode_gemm", DecodeGemmShared(mt));

    /// <summary>Dynamic shared memory of decode_gemm.cu's 16-bit form (and moe.cu's tensor-core experts over 16-bit weights) for x
    /// of 8 <paramref name="mt"/> rows: 4 stages of 128 W rows, x's rows and the norm weight, 64 columns each.</summary>
    private static uint DecodeGemmShared(int mt) => (uint)(DecodeGemmStages * (DecodeGemmBlockRows + 8 * mt + 1) * DecodeGemmTile * 2);

    private bool? _hopperDecodeProducts;
    private string? _hopperDecodeProductsError;

    /// <summary>Whether the decode products run on decode_gemm_hopper.cu here (decided once: the device, the option, the compile).</summary>
    private bool UsesHopperDecodeProducts => _hopperDecodeProducts ??=
        Options.HopperDecodeProducts && CudaDevice.ComputeCapability == (9, 0) && TryCompile("decode_gemm_hopper.cu", out _hopperDecodeProductsError);

    /// <summary>
    /// Why the decode products run on decode_gemm.cu although <see cref="CudaBackendOptions.HopperDecodeProducts"/> asks for
    /// the wgmma kernel: not compute capability 9.0, or NVRTC's log when decode_gemm_hopper.cu does not compile for sm_90a;
    /// null when it runs (or was not asked for).
    /// </summary>
    public string? HopperDecodeProductsUnavailableReason =>
        !Options.HopperDecodeProducts || UsesHopperDecodeProducts ? null
        : CudaDevice.ComputeCapability != (9, 0) ? $"the wgmma decode products need compute capability 9.0; this device is {CudaDevice.Architecture}"
        : _hopperDecodeProductsError;

    /// <summary>
    /// Slices of K for a decode product of <paramref name="blocks"/> row blocks and <paramref name="tiles"/> k-tiles, each
    /// row block's slices one thread-block cluster: doubled while the grid has fewer CTAs than <paramref name="ctasPerSm"/>
    /// times the device's SMs and the tiles divide evenly, at most 8 (llama-1b at 64 rows on 132 SMs, one CTA an SM: QKV 24
    /// blocks x 8, the output and down products 16 x 8, gate/up with SwiGLU 128 x 2).
    /// </summary>
    private int DecodeGemmSlices(int blocks, int tiles, int ctasPerSm = 1)
    {
        int slices = 1;
        while (slices < DecodeGemmMaxSlices && blocks * slices < ctasPerSm * CudaDevice.MultiprocessorCount && tiles % (2 * slices) == 0) slices *= 2;
        return slices;
    }

    /// <summary>The slices of a quantized decode product (int4, int8, their SwiGLU forms): <see cref="DecodeGemmSlices"/> aiming at
    /// <see cref="CudaBackendOptions.QuantizedDecodeProductCtasPerSm"/> CTAs an SM.</summary>
    private int QuantizedDecodeGemmSlices(int blocks, int tiles) => DecodeGemmSlices(blocks, tiles, Options.QuantizedDecodeProductCtasPerSm);
}
