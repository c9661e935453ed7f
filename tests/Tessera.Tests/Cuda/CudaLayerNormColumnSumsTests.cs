using Xunit;
using Tessera.Tensors;
using Tessera.Tests.Support;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The LayerNorm backward's column sums of dx (<see cref="IBackend.LayerNormBackward"/>'s dxColumnSums) on the GPU: the
/// warp-per-row kernels' third shared-memory slice (layernorm_backward_warp_sums_*) and the block kernel's, reduced by
/// column_reduce into the target, against the column sums in double of the dx the op stored; and the narrowing accumulate
/// (BF16/F16 += F32) that carries the sums from one block to the next.
/// </summary>
[Collection("cuda")]
public sealed class CudaLayerNormColumnSumsTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    /// <summary>
    /// dx, dWeight and dBias as the op without the sums gives them (dx bit for bit: the kernels round each value once, the
    /// sums read that rounded value; dW and dB to 1e-5, since the sums kernel's grid may differ and so its partial rows), and
    /// the sums = their initial values + the column sums of the stored dx. Tolerance: an F32 target 1e-5 norm-wise (fp32
    /// partials of n terms ~1: at worst ~n x 6e-8 of the terms' scale, against column sums of ~sqrt(n)); a BF16 target 1e-2
    /// (the result rounded to 8 bits once, 2^-9).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 768, 37, true, DType.F32)]      // GPT-2's width: the warp kernel, 3 vectors a lane
    [InlineData(DType.BF16, 768, 5000, true, DType.BF16)]   // many rows a warp; the sums into a BF16 bias gradient
    [InlineData(DType.BF16, 768, 5000, false, DType.F32)]   // no dBias
    [InlineData(DType.F32, 512, 37, true, DType.F32)]       // the warp kernel at its register limit (4 vectors a lane)
    [InlineData(DType.F32, 300, 64, true, DType.F32)]       // warp kernel, F32, a partly filled last vector
    [InlineData(DType.BF16, 1000, 37, true, DType.F32)]     // 4 vectors a lane, partly filled; 3C slices fit two CTAs an SM
    [InlineData(DType.F32, 768, 41, true, DType.F32)]       // 6 vectors a lane: the block kernel
    [InlineData(DType.BF16, 771, 37, true, DType.F32)]      // odd C, not 16-byte rows: the block kernel
    [InlineData(DType.F16, 1032, 300, false, DType.F16)]    // past the warp kernel's width: the block kernel, F16 sums
    [InlineData(DType.BF16, 768, 5000, true, DType.F32, true)]    // the sums in registers (LayerNormSumsInRegisters)
    [InlineData(DType.F32, 300, 64, true, DType.F32, true)]       // in registers, a partly filled last vector
    public void LayerNormBackwardSumsTheColumnsOfTheDxItStores(DType dtype, int c, int n, bool bias, DType sumsType, bool registers = false)
    {
        const double eps = 1e-5;
        using var inRegisters = registers
            ? new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Tessera.Cuda.CudaBackendOptions.Default with { LayerNormSumsInRegisters = true, ProfileOps = true })
            : null;
        IBackend be = inRegisters ?? (IBackend)Gpu;
        var x = Upload(be, Random(dtype, 2, n, c).Values, dtype, n, c);
        var w = Upload(be, Random(dtype, 1, c).Values, dtype, c);
        var b = Upload(be, Random(dtype, 1, c).Values, dtype, c);
        var y = be.Allocate(new Shape(n, c), dtype);
        var mean = be.Allocate(new Shape(n), DType.F32); var rstd = be.Allocate(new Shape(n), DType.F32);
        be.LayerNormForward(x, w, b, y, mean, rstd, eps);
        var dout = Upload(be, Random(dtype, 1, n, c).Values, dtype, n, c);
        var (_, dx0) = Random(dtype, 1, n, c);
        var (_, dw0) = Random(DType.F32, 1, c);
        var (_, db0) = Random(DType.F32, 1, c);
        var (_, s0) = Random(sumsType, 1, c);

        (double[] Dx, double[] Dw, double[]? Db, double[]? Sums) Run(bool sums)
        {
            var dx = Upload(be, dx0, dtype, n, c); var dw = Upload(be, dw0, DType.F32, c);
            var db = bias ? Upload(be, db0, DType.F32, c) : null;
            var ds = sums ? Upload(be, s0, sumsType, c) : null;
            be.LayerNormBackward(dout, x, w, mean, rstd, dx, dw, db, ds);
            return (Download(be, dx), Download(be, dw), db is null ? null : Download(be, db), ds is null ? null : Download(be, ds));
        }
        var plain = Run(sums: false);
        var summed = Run(sums: true);
        if (inRegisters is not null)
            Assert.Contains(inRegisters.Profiler!.Totals(), r => r.Name.StartsWith("layernorm_backward_warp_sums_regs_", StringComparison.Ordinal));
        Assert.Equal(plain.Dx, summed.Dx);
        NumericAssert.Close(plain.Dw, summed.Dw, 1e-5, "dWeight");
        if (bias) NumericAssert.Close(plain.Db!, summed.Db!, 1e-5, "dBias");
        var expected = (double[])s0.Clone();
        for (int r = 0; r < n; r++)
            for (int i = 0; i < c; i++) expected[i] += summed.Dx[(long)r * c + i];
        NumericAssert.Close(expected, summed.Sums!, sumsType == DType.F32 ? 1e-5 : 1e-2, $"{dtype} C={c} N={n}: column sums of dx");
    }

    /// <summary>BF16 and F16 accumulators += F32 values: one rounding of the F32 sum, bit for bit what the host computes.</summary>
    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void AccumulateAddsF32IntoA16BitAccumulatorWithOneRounding(DType dtype)
    {
        const int count = 1000;
        var (acc, a0) = Random(dtype, 4, count);
        var (x, x0) = Random(DType.F32, 4, count);
        Gpu.Accumulate(acc, x);
        var expected = Stored(a0.Zip(x0, (p, q) => (double)((float)p + (float)q)).ToArray(), dtype);
        Assert.Equal(expected, Download(acc));
    }
}
