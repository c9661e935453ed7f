using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU backend's ops for Gemma's and Qwen3's decode step against double references written from their definitions
/// (<see cref="DecodeOpReference"/>): the RMSNorm with a unit offset, the post-norm with its residual add, the head norms with
/// RoPE and the KV append, and the GELU-gated product. Inputs from fixed seeds (named in each test). Tolerances: F64 1e-12
/// (sums of at most a few hundred terms in another order), F32 1e-5 (one rounding of each stored value, relative to the
/// largest output).
/// </summary>
public sealed class CpuDecodeNormOpsTests
{
    private readonly CpuBackend _cpu = new(2);

    private static double Tolerance(DType dtype) => dtype == DType.F64 ? 1e-12 : 1e-5;

    private Tensor T(double[] values, DType dtype, params int[] dims) => TestTensors.FromDoubles(_cpu, values, dtype, dims);

    [Theory]
    [InlineData(DType.F64, false)]
    [InlineData(DType.F64, true)]
    [InlineData(DType.F32, true)]
    public void RmsNormForwardAppliesTheUnitOffset(DType dtype, bool unit)
    {
        var rng = new Random(41);   // seed 41
        int n = 5, c = 72;
        var x = TestTensors.Normal(rng, n * c);
        var w = TestTensors.Normal(rng, c, 0.3);
        var y = _cpu.Allocate(new Shape(n, c), dtype);
        var rstd = _cpu.Allocate(new Shape(n), dtype);
        _cpu.RmsNormForward(T(x, dtype, n, c), T(w, dtype, c), y, rstd, 1e-6, unit);
        NumericAssert.Close(DecodeOpReference.RmsNorm(x, w, n, c, 1e-6, unit), TestTensors.ToDoubles(_cpu, y), Tolerance(dtype), $"RmsNormForward unit={unit}");
    }

    [Theory]
    [InlineData(DType.F64, true)]
    [InlineData(DType.F32, false)]
    public void AccumulateRmsNormAddsTheNormalizedBranch(DType dtype, bool unit)
    {
        var rng = new Random(42);   // seed 42
        int n = 3, c = 40;
        var x = TestTensors.Normal(rng, n * c, 2);
        var w = TestTensors.Normal(rng, c, 0.3);
        var acc0 = TestTensors.Normal(rng, n * c);
        var acc = T(acc0, dtype, n, c);
        _cpu.AccumulateRmsNorm(acc, T(x, dtype, n, c), new RmsNormPrologue(T(w, dtype, c), 1e-6, unit));
        var norm = DecodeOpReference.RmsNorm(x, w, n, c, 1e-6, unit);
        NumericAssert.Close(acc0.Select((a, i) => a + norm[i]).ToArray(), TestTensors.ToDoubles(_cpu, acc), Tolerance(dtype), $"AccumulateRmsNorm unit={unit}");
    }

    [Fact]
    public void AccumulateRmsNormRefusesMismatchedShapesAndLeavesTheAccumulator()
    {
        var acc = T([1, 2, 3, 4, 5, 6], DType.F32, 2, 3);
        var ex = Assert.Throws<ArgumentException>(() =>
            _cpu.AccumulateRmsNorm(acc, T([1, 2, 3, 4], DType.F32, 2, 2), new RmsNormPrologue(T([1, 1], DType.F32, 2), 1e-6)));
        Assert.Contains("AccumulateRmsNorm", ex.Message);
        Assert.Equal([1.0, 2, 3, 4, 5, 6], TestTensors.ToDoubles(_cpu, acc));
    }

    [Theory]
    [InlineData(DType.F64, 2, 3, 4, 1, 16, true)]    // Gemma 3's shape in little: one kv head, unit-offset norms
    [InlineData(DType.F32, 1, 1, 4, 2, 8, false)]    // Qwen3's plain norms, one decode row
    public void NormalizeHeadsRopeAndAppendNormalizesRotatesAndAppends(DType dtype, int b, int t, int h, int k, int d, bool unit)
    {
        var rng = new Random(43);   // seed 43
        int capacity = 12, heads = h + 2 * k;
        int[] starts = b == 1 ? [4] : [0, 7];
        var qkv0 = TestTensors.Normal(rng, b * t * heads * d, 1.5);
        var cache0 = TestTensors.Normal(rng, b * capacity * 2 * k * d);
        var qw = TestTensors.Normal(rng, d, 0.3);
        var kw = TestTensors.Normal(rng, d, 0.3);
        var qkv = T(qkv0, dtype, b, t, heads, d);
        var cache = T(cache0, dtype, b, capacity, 2 * k, d);
        _cpu.NormalizeHeadsRopeAndAppend(qkv, h, new RmsNormPrologue(T(qw, dtype, d), 1e-6, unit), new RmsNormPrologue(T(kw, dtype, d), 1e-6, unit),
            cache, _cpu.FromArray(starts, b), 10000.0);
        var (eq, ec) = DecodeOpReference.NormalizeHeadsRopeAndAppend(qkv0, cache0, b, t, h, k, d, capacity, starts, qw, kw, 1e-6, unit, 10000.0);
        NumericAssert.Close(eq, TestTensors.ToDoubles(_cpu, qkv), Tolerance(dtype), "NormalizeHeadsRopeAndAppend qkv");
        NumericAssert.Close(ec, TestTensors.ToDoubles(_cpu, cache), Tolerance(dtype), "NormalizeHeadsRopeAndAppend cache");
    }

    [Fact]
    public void NormalizeHeadsRopeAndAppendRefusesANormOfAnotherHeadSize()
    {
        var qkv = _cpu.Allocate(new Shape(1, 1, 4, 8), DType.F32);
        var cache = _cpu.Allocate(new Shape(1, 4, 2, 8), DType.F32);
        var wrong = new RmsNormPrologue(_cpu.Allocate(new Shape(6), DType.F32), 1e-6);
        var right = new RmsNormPrologue(_cpu.Allocate(new Shape(8), DType.F32), 1e-6);
        var ex = Assert.Throws<ArgumentException>(() => _cpu.NormalizeHeadsRopeAndAppend(qkv, 2, wrong, right, cache, _cpu.FromArray([0], 1), 10000.0));
        Assert.Contains("queryNorm", ex.Message);
    }

    [Theory]
    [InlineData(DType.F64, true, true)]     // GeGLU with Gemma's unit-offset norm
    [InlineData(DType.F64, false, false)]   // SwiGLU, its norm plain
    [InlineData(DType.F32, true, false)]
    public void MatMulSwiGluGatesWithGeluOrSilu(DType dtype, bool gelu, bool unit)
    {
        var rng = new Random(44);   // seed 44
        int m = 3, f = 11, c = 24;
        var x = TestTensors.Normal(rng, m * c);
        var wg = TestTensors.Normal(rng, f * c, 0.3);
        var wu = TestTensors.Normal(rng, f * c, 0.3);
        var bg = TestTensors.Normal(rng, f, 0.5);
        var nw = TestTensors.Normal(rng, c, 0.3);
        var output = _cpu.Allocate(new Shape(m, f), dtype);
        _cpu.MatMulSwiGlu(T(x, dtype, m, c), T(wg, dtype, f, c), T(wu, dtype, f, c), output, T(bg, dtype, f), null,
            new RmsNormPrologue(T(nw, dtype, c), 1e-6, unit), gelu);
        var expected = DecodeOpReference.GatedProduct(x, wg, wu, bg, null, m, f, c, nw, 1e-6, unit, gelu);
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, output), Tolerance(dtype), $"MatMulSwiGlu gelu={gelu} unit={unit}");
    }
}
