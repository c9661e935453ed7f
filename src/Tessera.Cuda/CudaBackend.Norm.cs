using Tessera.Tensors;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend
{
    private (long Rows, int C) NormShape(string op, Tensor x, Tensor weight, params (Tensor? T, string Name, bool Stats)[] others)
    {
        RequireElementwise(op, x);
        RequireContiguous(op, "weight", weight);
        RequireDType(op, "weight", weight, x.DType);
        int c = x.Size(-1);
        long rows = x.NumElements / Math.Max(c, 1);
        if (weight.NumElements != c) throw new ArgumentException($"CudaBackend.{op}: weight {weight.Shape} must have {c} elements");
        foreach (var (t, name, stats) in others)
        {
            if (t is null) continue;
            RequireContiguous(op, name, t);
            long expected = stats ? rows : c;
            if (t.NumElements != expected) throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must have {expected} elements");
            if (stats) RequireDType(op, name, t, DType.F32);
        }
        return (rows, c);
    }

    public void LayerNormForward(Tensor x, Tensor weight, Tensor? bias, Tensor output, Tensor mean, Tensor rstd, double epsilon)
    {
        var (rows, c) = NormShape("LayerNormForward", x, weight, (bias, "bias", false), (mean, "mean", true), (rstd, "rstd", true));
        if (bias is not null) RequireDType("LayerNormForward", "bias", bias, x.DType);
        RequireElementwise("LayerNormForward", x, (output, "output"));
        if (rows == 0) return;
        ulong px = Ptr(x), pw = Ptr(weight), pb = PtrOrNull(bias), po = Ptr(output), pm = Ptr(mean), pr = Ptr(rstd);
        float eps = (float)epsilon;
        int vectors = VectorsPerLane(x.DType, c);
        if (Vectorizable(x.DType, c, px, pw, pb, po) && vectors <= 8)
        {
            void** wargs = stackalloc void*[] { &px, &pw, &pb, &po, &pm, &pr, &rows, &c, &eps };
            Launch("norm.cu", $"layernorm_forward_warp_{Suffix(x.DType, "LayerNormForward")}_k{vectors}", (uint)((rows + WarpRowsPerBlock - 1) / WarpRowsPerBlock), 32 * WarpRowsPerBlock, wargs);
            return;
        }
        void** args = stackalloc void*[] { &px, &pw, &pb, &po, &pm, &pr, &c, &eps };
        Launch("norm.cu", "layernorm_forward_" + Suffix(x.DType, "LayerNormForward"), (uint)rows, RowBlock(c), args);
    }

    public void LayerNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd,
        Tensor dx, Tensor dWeight, Tensor? dBias, Tensor? dxColumnSums = null)
    {
        const string op = "LayerNormBackward";
        var (rows, c) = NormShape(op, x, weight, (mean, "mean", true), (rstd, "rstd", true), (dWeight, "dWeight", false), (dBias, "dBias", false),
            (dxColumnSums, "dxColumnSums", false));
        RequireElementwise(op, x, (dOutput, "dOutput"), (dx, "dx"));
        if (dxColumnSums is not null) Suffix(dxColumnSums.DType, op);   // any float type: column_reduce converts
        if (rows == 0) return;
        ulong pd = Ptr(dOutput), px = Ptr(x), pw = Ptr(weight), pm = Ptr(mean), pr = Ptr(rstd), pdx = Ptr(dx);
        // Rows of the partials scratch: dW at [0, C), dB at [C, 2C), and with the column sums of dx those at [2C, 3C).
        bool sums = dxColumnSums is not null;
        int slices = sums ? 3 : 2;
        // The warp kernel holds a lane's row columns in registers (up to 4 16-byte vectors, so C <= 128 * (16 / element size))
        // and its warp's gradient slices in shared memory (8 warps x 2C floats, 3C with the sums); its bounds fit three CTAs
        // per SM, and the grid is one wave of those (fewer partial rows to sum than a grid of 4 per SM, which ran in two
        // waves). With the sums, a C past 768 in 16-bit types leaves room for fewer CTAs: the occupancy calculator says how many.
        uint smemBytes = (uint)(WarpRowsPerBlock * slices * c * sizeof(float));
        int vectors = VectorsPerLane(x.DType, c);
        bool warp = Vectorizable(x.DType, c, pd, px, pw, pdx) && vectors <= 4 && c % 4 == 0
            && smemBytes <= CudaDevice.MaxSharedMemoryPerBlockOptIn;
        string sumsForm = !sums ? "" : Options.LayerNormSumsInRegisters ? "sums_regs_" : "sums_";
        string kernel = warp ? $"layernorm_backward_warp_{sumsForm}{Suffix(x.DType, op)}_k{vectors}" : "layernorm_backward_" + Suffix(x.DType, op);
        if (warp) PreferSharedMemory("norm.cu", kernel); // three CTAs of 8 warps x 2C (or 3C) floats per SM at C = 768
        int g = warp
            ? (int)Math.Min((rows + WarpRowsPerBlock - 1) / WarpRowsPerBlock, (sums ? NormResidentCtas(kernel, smemBytes) : 3L) * CudaDevice.MultiprocessorCount)
            : (int)Math.Min(rows, 2L * CudaDevice.MultiprocessorCount);
        long stride = (long)slices * c;
        ulong scratch = Scratch((long)g * stride * sizeof(float));
        if (warp)
        {
            void** args = stackalloc void*[] { &pd, &px, &pw, &pm, &pr, &pdx, &scratch, &rows, &c };
            Launch("norm.cu", kernel, (uint)g, 32 * WarpRowsPerBlock, args, smemBytes);
        }
        else
        {
            int sumsFlag = sums ? 1 : 0;
            void** args = stackalloc void*[] { &pd, &px, &pw, &pm, &pr, &pdx, &scratch, &rows, &c, &sumsFlag };
            Launch("norm.cu", kernel, (uint)g, RowBlock(c), args);
        }
        if (dBias is null || dBias.DType != dWeight.DType)
        {
            ColumnReduce(scratch, g, stride, c, dWeight.DType, Ptr(dWeight), op);
            if (dBias is not null) ColumnReduce(scratch + (ulong)(c * sizeof(float)), g, stride, c, dBias.DType, Ptr(dBias), op);
        }
        else ColumnReduce(scratch, g, stride, c, dWeight.DType, Ptr(dWeight), op, Ptr(dBias));
        // column_reduce adds into its target, so the sums accumulate like the parameter gradients.
        if (sums) ColumnReduce(scratch + (ulong)(2 * c * sizeof(float)), g, stride, c, dxColumnSums!.DType, Ptr(dxColumnSums), op);
        FreeScratch(scratch);
    }

    /// <summary>CTAs of a warp-per-row LayerNorm backward kernel that fit one SM at <paramref name="shared"/> bytes of dynamic
    /// shared memory, at most the three its bounds ask for (the occupancy calculator's answer, asked once per kernel and size).</summary>
    private long NormResidentCtas(string kernel, uint shared)
    {
        if (!_residentCtas.TryGetValue((kernel, shared), out int ctas))
        {
            AllowDynamicSharedMemory("norm.cu", kernel, shared);   // before the occupancy query
            _residentCtas[(kernel, shared)] = ctas = Math.Clamp(Kernels.Module("norm.cu").ResidentCtas(kernel, 32 * (int)WarpRowsPerBlock, (int)shared), 1, 3);
        }
        return ctas;
    }

    /// <summary>16-byte vectors per lane that a warp needs to hold a row of <paramref name="c"/> elements.</summary>
    private static int VectorsPerLane(DType dtype, int c) => (c + 32 * (16 / dtype.SizeInBytes()) - 1) / (32 * (16 / dtype.SizeInBytes()));

    /// <summary>Rows per block (one warp each) of the warp-per-row LayerNorm kernels.</summary>
    private const uint WarpRowsPerBlock = 8;

    /// <summary>Whether rows of <paramref name="c"/> elements can be read in 16-byte vectors from every pointer (0 = absent).</summary>
    private static bool Vectorizable(DType dtype, int c, params ulong[] pointers)
    {
        if (dtype is not (DType.F32 or DType.BF16 or DType.F16) || c * dtype.SizeInBytes() % 16 != 0) return false;
        foreach (var p in pointers) if (p % 16 != 0) return false;
        return true;
    }

    public void RmsNormForward(Tensor x, Tensor weight, Tensor output, Tensor rstd, double epsilon, bool unitOffset = false)
    {
        var (rows, c) = NormShape("RmsNormForward", x, weight, (rstd, "rstd", true));
        RequireElementwise("RmsNormForward", x, (output, "output"));
        LaunchRmsNorm("RmsNormForward", x, weight, output, Ptr(rstd), rows, c, epsilon, unitOffset, accumulate: false);
    }

    /// <inheritdoc/>
    /// <remarks>One launch: the RMSNorm kernels with their accumulate flag (each output element added to the accumulator's
    /// as the accumulate kernel adds it, after the same rounding), rstd not stored.</remarks>
    public void AccumulateRmsNorm(Tensor accumulator, Tensor x, RmsNormPrologue norm)
    {
        const string op = nameof(AccumulateRmsNorm);
        var (rows, c) = NormShape(op, x, norm.Weight);
        RequireElementwise(op, x, (accumulator, "accumulator"));
        if (Ptr(accumulator) < Ptr(x) + (ulong)(x.NumElements * x.DType.SizeInBytes())
            && Ptr(x) < Ptr(accumulator) + (ulong)(accumulator.NumElements * accumulator.DType.SizeInBytes()))
            throw new ArgumentException($"CudaBackend.{op}: the accumulator and x overlap");
        LaunchRmsNorm(op, x, norm.Weight, accumulator, 0, rows, c, norm.Epsilon, norm.UnitOffset, accumulate: true);
    }

    /// <summary>The RMSNorm forward kernels: output = x r scale (accumulate: output += it), rstd stored when not 0.</summary>
    private void LaunchRmsNorm(string op, Tensor x, Tensor weight, Tensor output, ulong pr, long rows, int c, double epsilon,
        bool unitOffset, bool accumulate)
    {
        if (rows == 0) return;
        ulong px = Ptr(x), pw = Ptr(weight), po = Ptr(output);
        float eps = (float)epsilon;
        int unit = unitOffset ? 1 : 0, acc = accumulate ? 1 : 0;
        if (RowVectorBlock(x.DType, c, px, pw, po) is uint threads)
        {
            void** vargs = stackalloc void*[] { &px, &pw, &po, &pr, &rows, &c, &eps, &unit, &acc };
            Launch("norm.cu", "rmsnorm_forward_vec_" + Suffix(x.DType, op), RowVectorGrid(rows, threads), threads, vargs);
            return;
        }
        void** args = stackalloc void*[] { &px, &pw, &po, &pr, &c, &eps, &unit, &acc };
        Launch("norm.cu", "rmsnorm_forward_" + Suffix(x.DType, op), (uint)rows, RowBlock(c), args);
    }

    /// <summary>
    /// Threads per block of the row-in-registers RMSNorm kernels (one 16-byte vector of the row per thread, rounded up to whole
    /// warps), or null when rows of <paramref name="c"/> elements cannot be read in 16-byte vectors from every pointer or need
    /// more than 1024 threads.
    /// </summary>
    private static uint? RowVectorBlock(DType dtype, int c, params ulong[] pointers)
    {
        if (!Vectorizable(dtype, c, pointers)) return null;
        int vectors = c / (16 / dtype.SizeInBytes());
        int threads = (vectors + 31) / 32 * 32;
        return threads <= 1024 ? (uint)threads : null;
    }

    /// <summary>Blocks of the row-in-registers kernels: as many as fill the SMs' 2048 threads once, each walking rows with a grid stride.</summary>
    private uint RowVectorGrid(long rows, uint threads) =>
        (uint)Math.Min(rows, (long)CudaDevice.MultiprocessorCount * Math.Max(1, 2048 / (int)threads));

    public void RmsNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight)
    {
        const string op = "RmsNormBackward";
        var (rows, c) = NormShape(op, x, weight, (rstd, "rstd", true), (dWeight, "dWeight", false));
        RequireElementwise(op, x, (dOutput, "dOutput"), (dx, "dx"));
        if (rows == 0) return;
        ulong pd = Ptr(dOutput), px = Ptr(x), pw = Ptr(weight), pr = Ptr(rstd), pdx = Ptr(dx);
        uint? vector = RowVectorBlock(x.DType, c, pd, px, pw, pdx);
        int g = vector is uint threads ? (int)RowVectorGrid(rows, threads) : (int)Math.Min(rows, 2L * CudaDevice.MultiprocessorCount);
        ulong scratch = Scratch((long)g * 2 * c * sizeof(float));   // (G, 2C) partials; the RMSNorm kernels fill [0, C)
        void** args = stackalloc void*[] { &pd, &px, &pw, &pr, &pdx, &scratch, &rows, &c };
        if (vector is uint block) Launch("norm.cu", "rmsnorm_backward_vec_" + Suffix(x.DType, op), (uint)g, block, args);
        else Launch("norm.cu", "rmsnorm_backward_" + Suffix(x.DType, op), (uint)g, RowBlock(c), args);
        ColumnReduce(scratch, g, 2L * c, c, dWeight.DType, Ptr(dWeight), op);
        FreeScratch(scratch);
    }
}
