using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU backend's optimizer ops on BF16 gradients (what a mixed-precision data-parallel optimizer hands them, as the CUDA
/// backend takes them): <see cref="IBackend.AdamW"/> over F32 parameters and <see cref="IBackend.SumOfSquares"/>. A BF16
/// gradient widens to F32 exactly, so AdamW is compared bitwise (tolerance 0) with AdamW over the widened gradient; the
/// sum of squares of BF16 values is exact in double per element (8-bit significands) and summed in double, but the result
/// scalar is F32 (what the update reads), so it is compared with a double sum within 1e-6 relative (F32 rounds at 6e-8).
/// </summary>
public sealed class CpuBFloat16GradientOptimizerTests
{
    private readonly CpuBackend _cpu = new(2);

    [Theory]
    [InlineData(1, true)]
    [InlineData(1001, false)]
    [InlineData(70_001, true)]
    public void AdamWOnBFloat16GradientsIsBitwiseAdamWOnTheWidenedGradients(int n, bool lowPrecisionCopy)
    {
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        var initial = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 0.05f).ToArray();
        Tensor P() => _cpu.FromHost<float>(initial, new Shape(n));
        var (p1, p2) = (P(), P());
        var (m1, v1, m2, v2) = (_cpu.Zeros(new Shape(n), DType.F32), _cpu.Zeros(new Shape(n), DType.F32), _cpu.Zeros(new Shape(n), DType.F32), _cpu.Zeros(new Shape(n), DType.F32));
        var (c1, c2) = (_cpu.Allocate(new Shape(n), DType.BF16), _cpu.Allocate(new Shape(n), DType.BF16));
        for (long t = 1; t <= 4; t++)
        {
            var g = Enumerable.Range(0, n).Select(_ => BFloat16.FromSingle((float)(rng.NextDouble() * 2 - 1) * 0.3f)).ToArray();
            var bf16 = _cpu.FromHost<BFloat16>(g, new Shape(n));
            var wide = _cpu.Allocate(new Shape(n), DType.F32);
            _cpu.Copy(bf16, wide);
            var sum = _cpu.Zeros(new Shape(1), DType.F32);
            _cpu.SumOfSquares(bf16, sum);
            double expected = g.Sum(x => (double)x.ToSingle() * x.ToSingle());
            Assert.True(Math.Abs(_cpu.ReadScalar(sum) - expected) <= 1e-6 * expected, $"step {t}: sum of squares {_cpu.ReadScalar(sum)}, expected {expected}");
            var step = new AdamWStep(3e-3, 0.9, 0.95, 1e-8, 0.1, t, 0.5);
            _cpu.AdamW(p1, wide, m1, v1, step, sum, lowPrecisionCopy ? c1 : null);
            _cpu.AdamW(p2, bf16, m2, v2, step, sum, lowPrecisionCopy ? c2 : null);
            Assert.Equal(Bits(p1), Bits(p2));
            Assert.Equal(Bits(m1), Bits(m2));
            Assert.Equal(Bits(v1), Bits(v2));
            if (lowPrecisionCopy) Assert.Equal(_cpu.ToArray<BFloat16>(c1), _cpu.ToArray<BFloat16>(c2));
        }
    }

    [Fact]
    public void AdamWOnBFloat16GradientsRefusesANonBFloat16Copy()
    {
        var f32 = _cpu.Zeros(new Shape(8), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.AdamW(f32, _cpu.Zeros(new Shape(8), DType.BF16), _cpu.Zeros(new Shape(8), DType.F32), _cpu.Zeros(new Shape(8), DType.F32),
            new AdamWStep(1e-3, 0.9, 0.95, 1e-8, 0, 1, 0), null, _cpu.Zeros(new Shape(8), DType.F16)));
        Assert.Contains("lowPrecisionCopy", e.Message);
    }

    private uint[] Bits(Tensor f32) => Array.ConvertAll(_cpu.ToArray<float>(f32), BitConverter.SingleToUInt32Bits);
}
