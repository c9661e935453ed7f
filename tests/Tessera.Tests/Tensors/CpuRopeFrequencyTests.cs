using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The RoPE ops with a frequency description (<see cref="RopeFrequencies"/>): an explicit table, YaRN's attention factor,
/// dynamic NTK's per-call rule; against a direct rotate-half reference in F64.
/// </summary>
public sealed class CpuRopeFrequencyTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>Rotate-half at positions start + t with the given inverse frequencies, cos and sin times factor, in F64.</summary>
    private static double[] Reference(double[] x, int b, int t, int h, int d, int start, double[] inv, double factor)
    {
        var y = (double[])x.Clone();
        int half = d / 2;
        for (int bi = 0; bi < b; bi++)
            for (int ti = 0; ti < t; ti++)
                for (int hi = 0; hi < h; hi++)
                    for (int i = 0; i < half; i++)
                    {
                        int at = ((bi * t + ti) * h + hi) * d;
                        double angle = (start + ti) * inv[i], c = Math.Cos(angle) * factor, s = Math.Sin(angle) * factor;
                        double x1 = x[at + i], x2 = x[at + i + half];
                        y[at + i] = x1 * c - x2 * s;
                        y[at + i + half] = x2 * c + x1 * s;
                    }
        return y;
    }

    [Fact]
    public void AnExplicitTableAndAnAttentionFactorRotateByThoseFrequenciesAndScale()
    {
        var rng = new Random(5);
        int b = 2, t = 5, h = 3, d = 8;
        double[] inv = [1.0, 0.3, 0.02, 0.0007];
        var freq = new RopeFrequencies(10000) { InverseFrequencies = inv, AttentionFactor = 1.25 };
        var values = TestTensors.Normal(rng, b * t * h * d);
        var x = TestTensors.FromDoubles(_cpu, values, DType.F64, b, t, h, d);
        _cpu.Rope(x, 11, freq);
        // Same double arithmetic in a different order (cos times factor once): a few ulps.
        NumericAssert.Close(Reference(values, b, t, h, d, 11, inv, 1.25), _cpu.ToArray<double>(x), 1e-14, "rope with a table");
    }

    [Fact]
    public void ABareThetaEqualsTheTableThetaToTheMinusTwoIOverD()
    {
        var rng = new Random(6);
        int b = 1, t = 4, h = 2, d = 16;
        double theta = 500000;
        var table = Enumerable.Range(0, d / 2).Select(i => Math.Pow(theta, -2.0 * i / d)).ToArray();
        var values = TestTensors.Normal(rng, b * t * h * d);
        var a = TestTensors.FromDoubles(_cpu, values, DType.F32, b, t, h, d);
        var c = TestTensors.FromDoubles(_cpu, values, DType.F32, b, t, h, d);
        _cpu.Rope(a, 3, theta);
        _cpu.Rope(c, 3, new RopeFrequencies(theta) { InverseFrequencies = table });
        Assert.Equal(_cpu.ToArray<float>(a), _cpu.ToArray<float>(c));   // the same doubles, the same rounding: bitwise
    }

    [Fact]
    public void TheInverseRotationIsTheAdjointWithAnAttentionFactorAndDynamicScaling()
    {
        // <Rope(x), y> = <x, Rope^T(y)>: the backward pass of a scaled rotation is the scaled inverse rotation.
        var rng = new Random(7);
        int b = 1, t = 9, h = 2, d = 8;
        var freq = new RopeFrequencies(100) { AttentionFactor = 1.1, DynamicFactor = 2, DynamicOriginalLength = 4 };
        var x = TestTensors.Normal(rng, b * t * h * d);
        var y = TestTensors.Normal(rng, b * t * h * d);
        var tx = TestTensors.FromDoubles(_cpu, x, DType.F64, b, t, h, d);
        var ty = TestTensors.FromDoubles(_cpu, y, DType.F64, b, t, h, d);
        _cpu.Rope(tx, 2, freq);
        _cpu.Rope(ty, 2, freq, inverse: true);
        double lhs = TestTensors.Dot(_cpu.ToArray<double>(tx), y), rhs = TestTensors.Dot(x, _cpu.ToArray<double>(ty));
        Assert.True(Math.Abs(lhs - rhs) < 1e-12 * Math.Max(1, Math.Abs(lhs)), $"<Rope x, y> = {lhs} but <x, Rope^T y> = {rhs}");
    }

    [Fact]
    public void DynamicScalingKeepsThePlainFrequenciesUpToTheOriginalLengthAndRescalesTheBaseBeyond()
    {
        int d = 8;
        double theta = 10000, factor = 4;
        var freq = new RopeFrequencies(theta) { DynamicFactor = factor, DynamicOriginalLength = 16 };
        var plain = new RopeFrequencies(theta).At(d, 0);
        Assert.Equal(plain, freq.At(d, 16));
        // transformers: base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2)), seq_len 24.
        double scaledBase = theta * Math.Pow(factor * 24 / 16.0 - (factor - 1), d / (d - 2.0));
        var at24 = freq.At(d, 24);
        for (int i = 0; i < d / 2; i++)
            Assert.True(Math.Abs(at24[i] - Math.Pow(scaledBase, -2.0 * i / d)) <= 1e-15 * Math.Pow(scaledBase, -2.0 * i / d), $"pair {i}");
        Assert.True(at24[1] < plain[1], "a longer context must slow the rotations");
    }

    [Fact]
    public void DynamicScalingAtDevicePositionsUsesTheLongestSequenceOfTheBatch()
    {
        // transformers takes max(position_ids) + 1 over the whole batch: a short sequence beside a long one rotates with
        // the long one's frequencies.
        var rng = new Random(8);
        int b = 2, t = 1, h = 1, d = 8;
        var freq = new RopeFrequencies(10000) { DynamicFactor = 2, DynamicOriginalLength = 8 };
        var values = TestTensors.Normal(rng, b * t * h * d);
        var x = TestTensors.FromDoubles(_cpu, values, DType.F64, b, t, h, d);
        _cpu.Rope(x, _cpu.FromArray(new[] { 3, 20 }, 2), freq);
        var inv = freq.At(d, 21);
        var expected = Reference(values.AsSpan(0, d).ToArray(), 1, 1, 1, d, 3, inv, 1.0);
        NumericAssert.Close(expected, _cpu.ToArray<double>(x.Slice(0, 0, 1)), 1e-14, "the short sequence");
    }

    [Theory]
    [InlineData(3)]
    [InlineData(10)]
    public void ATableOfTheWrongLengthIsRefusedNamingBothSizes(int entries)
    {
        var freq = new RopeFrequencies(10000) { InverseFrequencies = new double[entries] };
        var x = _cpu.Allocate(new Shape(1, 1, 1, 8), DType.F64);
        var e = Assert.Throws<ArgumentException>(() => _cpu.Rope(x, 0, freq));
        Assert.Contains($"InverseFrequencies has {entries} values; a head of size 8 needs 4", e.Message);
    }

    [Fact]
    public void PartialRotaryTurnsTheFirstRChannelsAsAHeadOfSizeRAndPassesTheRestThrough()
    {
        var rng = new Random(7);
        int b = 2, t = 4, h = 3, d = 16, r = 12;
        var freq = new RopeFrequencies(10000) { RotaryDimensions = r, AttentionFactor = 1.1 };
        var values = TestTensors.Normal(rng, b * t * h * d);
        var x = TestTensors.FromDoubles(_cpu, values, DType.F64, b, t, h, d);
        _cpu.Rope(x, 5, freq);
        var got = _cpu.ToArray<double>(x);
        var inv = Enumerable.Range(0, r / 2).Select(i => Math.Pow(10000, -2.0 * i / r)).ToArray();   // frequencies over R, not D
        for (int row = 0; row < b * t * h; row++)
        {
            int ti = row / h % t;
            var head = values.Skip(row * d).Take(r).ToArray();
            var expected = Reference(head, 1, 1, 1, r, 5 + ti, inv, 1.1);
            NumericAssert.Close(expected, got.Skip(row * d).Take(r).ToArray(), 1e-14, $"rotated channels of row {row}");
            for (int i = r; i < d; i++) Assert.Equal(values[row * d + i], got[row * d + i]);   // passed through untouched
        }
        _cpu.Rope(x, 5, freq, inverse: true);   // the transpose: the rotated part comes back scaled by the factor squared
        var back = _cpu.ToArray<double>(x);
        for (int row = 0; row < b * t * h; row++)
            for (int i = 0; i < d; i++)
                Assert.Equal(values[row * d + i] * (i < r ? 1.1 * 1.1 : 1), back[row * d + i], 12);
    }

    [Fact]
    public void LongRopeSwitchesTablesWhenTheCallReachesPastTheOriginalLengthAndRefusesMixingWithShortKeys()
    {
        double[] shortTable = [1.0, 0.1, 0.01, 0.001], longTable = [0.5, 0.05, 0.002, 0.0001];
        var freq = new RopeFrequencies(10000) { InverseFrequencies = shortTable, LongInverseFrequencies = longTable, LongOriginalLength = 6, AttentionFactor = 1.2 };
        Assert.Equal(shortTable, freq.At(8, 6));
        Assert.Equal(longTable, freq.At(8, 7));
        var rng = new Random(8);
        int t = 7, h = 2, d = 8;
        var values = TestTensors.Normal(rng, t * h * d);
        foreach (var (length, table) in new[] { (6, shortTable), (7, longTable) })
        {
            var x = TestTensors.FromDoubles(_cpu, values.Take(length * h * d).ToArray(), DType.F64, 1, length, h, d);
            _cpu.Rope(x, 0, freq);
            NumericAssert.Close(Reference(values.Take(length * h * d).ToArray(), 1, length, h, d, 0, table, 1.2), _cpu.ToArray<double>(x), 1e-14, $"length {length}");
        }
        // A cached step from position 6 (keys 0..5 rotated with the short table) reaching 7 would rotate with the long one.
        var step = TestTensors.FromDoubles(_cpu, values.Take(h * d).ToArray(), DType.F64, 1, 1, h, d);
        var e = Assert.Throws<InvalidOperationException>(() => _cpu.Rope(step, 6, freq));
        Assert.Contains("LongRoPE", e.Message);
        _cpu.Rope(step, 7, freq);   // past the switch on both sides: fine
        var bad = freq with { InverseFrequencies = null };
        Assert.Contains("needs InverseFrequencies", Assert.Throws<ArgumentException>(() => bad.Validate(8)).Message);
    }
}
