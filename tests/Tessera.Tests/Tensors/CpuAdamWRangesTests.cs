using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// <see cref="IBackend.AdamWRanges"/> as the CPU backend runs it (the interface's range-by-range default): each range updated
/// as one <see cref="IBackend.AdamW"/> call on its slices with its own weight decay, gaps untouched (bit for bit: the same
/// operations); and the ranges' validation.
/// </summary>
public sealed class CpuAdamWRangesTests
{
    private readonly IBackend _cpu = new CpuBackend(2);   // through the interface: its default AdamWRanges

    [Fact]
    public void EachRangeIsOneAdamWCallWithItsOwnDecay()
    {
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        const int n = 300;
        AdamWRange[] ranges = [new(0, 100, true), new(100, 37, false), new(150, 140, true)];   // [137, 150) and [290, 300) are gaps
        float[] Random() => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var (p0, g) = (Random(), Random());
        var step = new AdamWStep(0.01, 0.9, 0.95, 1e-8, 0.1, 3, 0.5);
        var sum = _cpu.FromHost<float>([4f], new Shape(1));

        var p = _cpu.FromHost<float>(p0, new Shape(n));
        var (m, v, low) = (_cpu.Zeros(new Shape(n), DType.F32), _cpu.Zeros(new Shape(n), DType.F32), _cpu.Zeros(new Shape(n), DType.BF16));
        _cpu.AdamWRanges(p, _cpu.FromHost<float>(g, new Shape(n)), m, v, ranges, step, sum, low);

        var p2 = _cpu.FromHost<float>(p0, new Shape(n));
        var (m2, v2, low2) = (_cpu.Zeros(new Shape(n), DType.F32), _cpu.Zeros(new Shape(n), DType.F32), _cpu.Zeros(new Shape(n), DType.BF16));
        var g2 = _cpu.FromHost<float>(g, new Shape(n));
        foreach (var r in ranges)
        {
            Tensor Part(Tensor t) => t.Narrow(r.Offset, new Shape((int)r.Length));
            _cpu.AdamW(Part(p2), Part(g2), Part(m2), Part(v2), step with { WeightDecay = r.WeightDecay ? 0.1 : 0 }, sum, Part(low2));
        }
        Assert.Equal(_cpu.ToArray<float>(p2), _cpu.ToArray<float>(p));
        Assert.Equal(_cpu.ToArray<float>(m2), _cpu.ToArray<float>(m));
        Assert.Equal(_cpu.ToArray<BFloat16>(low2), _cpu.ToArray<BFloat16>(low));
        var after = _cpu.ToArray<float>(p);
        Assert.Equal(p0[140], after[140]);
        Assert.Equal(p0[299], after[299]);
        Assert.NotEqual(p0[120], after[120]);
        // The undecayed range moved less than a decayed update would have: decay was applied per range.
        var decayedEverywhere = _cpu.FromHost<float>(p0, new Shape(n));
        _cpu.AdamW(decayedEverywhere.Narrow(100, new Shape(37)), g2.Narrow(100, new Shape(37)), _cpu.Zeros(new Shape(37), DType.F32),
            _cpu.Zeros(new Shape(37), DType.F32), step, sum);
        Assert.NotEqual(_cpu.ToArray<float>(decayedEverywhere)[120], after[120]);
    }

    [Theory]
    [InlineData(10, 5, 12, 4, "range 1 [12, +4) must start at or after 15")]     // overlapping
    [InlineData(0, 5, 4, 20, "range 1 [4, +20) must start at or after 5")]       // unsorted
    [InlineData(0, 5, 90, 20, "end within the 100 parameters")]                 // past the end
    [InlineData(0, -1, 10, 5, "range 0 [0, +-1)")]                               // negative length
    public void BadRangesAreRefusedSayingWhy(long o0, long l0, long o1, long l1, string expected)
    {
        var p = _cpu.Zeros(new Shape(100), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.AdamWRanges(p, p, p, p, [new(o0, l0, true), new(o1, l1, false)],
            new AdamWStep(0.01, 0.9, 0.95, 1e-8, 0.1, 1, 0)));
        Assert.Contains(expected, e.Message);
    }
}
