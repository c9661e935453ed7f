using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>The KV-cache ops at per-sequence device positions and the argmax, against the position-free ops they generalise.</summary>
public class CpuDecodingOpsTests
{
    private readonly CpuBackend _cpu = new(2);

    private Tensor Positions(params int[] starts) => _cpu.FromArray(starts, starts.Length);

    [Fact]
    public void RopeAtPerSequencePositionsEqualsRopeAtEachSequencesStart()
    {
        var rng = new Random(1);
        int b = 3, t = 2, h = 3, d = 8;
        var values = TestTensors.Normal(rng, b * t * h * d);
        var x = TestTensors.FromDoubles(_cpu, values, DType.F64, b, t, h, d);
        _cpu.Rope(x, Positions(0, 7, 1000), 10000.0);
        int[] starts = [0, 7, 1000];
        for (int i = 0; i < b; i++)
        {
            var one = TestTensors.FromDoubles(_cpu, values.AsSpan(i * t * h * d, t * h * d).ToArray(), DType.F64, 1, t, h, d);
            _cpu.Rope(one, starts[i], 10000.0);
            // The same rotation by the same angles: exact.
            Assert.Equal(TestTensors.ToDoubles(_cpu, one), TestTensors.ToDoubles(_cpu, x.Slice(0, i, 1)));
        }
    }

    [Fact]
    public void CachedAttentionSeesExactlyTheFilledKeysOfEachSequence()
    {
        var rng = new Random(2);
        int b = 2, t = 2, h = 4, kh = 2, d = 8, capacity = 12;
        int[] starts = [3, 8];
        var q = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * t * h * d), DType.F64, b, t, h, d);
        var kv = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * capacity * 2 * kh * d), DType.F64, b, capacity, 2 * kh, d);
        var keys = kv.Slice(2, 0, kh); var values = kv.Slice(2, kh, kh);
        var output = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        TestTensors.Poison(_cpu, output);
        _cpu.AttentionForwardCached(q, keys, values, Positions(starts), output, 0.3);
        for (int i = 0; i < b; i++)
        {
            int filled = starts[i] + t;
            var expected = _cpu.Allocate(new Shape(1, t, h, d), DType.F64);
            _cpu.AttentionForward(q.Slice(0, i, 1), keys.Slice(0, i, 1).Slice(1, 0, filled), values.Slice(0, i, 1).Slice(1, 0, filled), expected, null, 0.3);
            Assert.Equal(TestTensors.ToDoubles(_cpu, expected), TestTensors.ToDoubles(_cpu, output.Slice(0, i, 1)));
        }
        // Garbage beyond the filled positions must not matter.
        _cpu.Fill(kv.Slice(1, 10, 2), 1e6);
        var again = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        _cpu.AttentionForwardCached(q, keys, values, Positions(starts), again, 0.3);
        Assert.Equal(TestTensors.ToDoubles(_cpu, output), TestTensors.ToDoubles(_cpu, again));
    }

    [Fact]
    public void CopyAtPositionsAppendsEachSequenceAtItsLengthAndTouchesNothingElse()
    {
        int b = 2, t = 2, r = 3, d = 4, capacity = 6;
        var sourceValues = Enumerable.Range(1, b * t * r * d).Select(i => (double)i).ToArray();
        var source = TestTensors.FromDoubles(_cpu, sourceValues, DType.F32, b, t, r, d);
        var cache = _cpu.Allocate(new Shape(b, capacity, r, d), DType.F32);
        _cpu.Fill(cache, -1);
        _cpu.CopyAtPositions(source, cache, Positions(1, 4));
        var got = TestTensors.ToDoubles(_cpu, cache);
        for (int i = 0; i < b; i++)
            for (int p = 0; p < capacity; p++)
                for (int e = 0; e < r * d; e++)
                {
                    int start = i == 0 ? 1 : 4;
                    double expected = p >= start && p < start + t ? sourceValues[((i * t) + p - start) * r * d + e] : -1;
                    Assert.Equal(expected, got[(i * capacity + p) * r * d + e]);
                }
        var e2 = Assert.Throws<ArgumentException>(() => _cpu.CopyAtPositions(source, cache, Positions(1, 5)));
        Assert.Contains("no room", e2.Message);
    }

    [Fact]
    public void RopeAndAppendRotatesQueriesAndKeysAndAppendsKeysAndValues()
    {
        int b = 1, t = 1, h = 2, kh = 1, d = 4, capacity = 3;
        // One row: q heads 0-1, k head 2, v head 3, each (1, 1, 0, 0): at position 2 with theta 100 the pair (i, i + 2) holds
        // (1, 0) and rotates by a_i = 2 * 100^(-2i/d) into (cos a_i, sin a_i) ("rotate half" pairs).
        var values = Enumerable.Repeat(new double[] { 1, 1, 0, 0 }, h + 2 * kh).SelectMany(v => v).ToArray();
        var qkv = TestTensors.FromDoubles(_cpu, values, DType.F64, b, t, h + 2 * kh, d);
        var cache = _cpu.Allocate(new Shape(b, capacity, 2 * kh, d), DType.F64);
        _cpu.Fill(cache, -1);
        _cpu.RopeAndAppend(qkv, h, cache, Positions(2), 100.0);
        var got = TestTensors.ToDoubles(_cpu, qkv);
        double a0 = 2.0, a1 = 2.0 * Math.Pow(100.0, -0.5);
        double[] rotated = [Math.Cos(a0), Math.Cos(a1), Math.Sin(a0), Math.Sin(a1)];
        for (int head = 0; head < h + kh; head++)
            for (int e = 0; e < d; e++) Assert.Equal(rotated[e], got[head * d + e], 12);
        Assert.Equal(values[((h + kh) * d)..], got[((h + kh) * d)..]);          // v is not rotated
        var cached = TestTensors.ToDoubles(_cpu, cache);
        Assert.All(cached[..(2 * 2 * kh * d)], x => Assert.Equal(-1, x));       // positions 0 and 1 untouched
        Assert.Equal(got[(h * d)..], cached[(2 * 2 * kh * d)..]);               // k (rotated) and v at position 2
        var e2 = Assert.Throws<ArgumentException>(() => _cpu.RopeAndAppend(qkv, h + 1, cache, Positions(2), 100.0));
        Assert.Contains("query heads", e2.Message);
    }

    [Fact]
    public void FillPositionsAndIncrementCountFromTheStarts()
    {
        var starts = Positions(5, 0);
        var ids = _cpu.Allocate(new Shape(2, 3), DType.I32);
        _cpu.FillPositions(starts, ids);
        var host = new int[6];
        _cpu.CopyToHost<int>(ids, host);
        Assert.Equal(new[] { 5, 6, 7, 0, 1, 2 }, host);
        _cpu.Increment(starts, 3);
        var s = new int[2];
        _cpu.CopyToHost<int>(starts, s);
        Assert.Equal(new[] { 8, 3 }, s);
    }

    [Fact]
    public void ArgMaxTakesTheFirstMaximumOfEachRowOfAStridedView()
    {
        // Rows of 6 of which the view sees the first 4: the maxima at columns 4-5 must be ignored.
        var x = _cpu.FromArray(new float[]
        {
            1, 3, 3, 2, 9, 9,
            -5, -4, -4.5f, -4, 0, 0,
            float.NaN, 0, 1, 1, 0, 0,
        }, 3, 6);
        var indices = _cpu.Allocate(new Shape(3), DType.I32);
        _cpu.ArgMax(x.Slice(1, 0, 4), indices);
        var host = new int[3];
        _cpu.CopyToHost<int>(indices, host);
        Assert.Equal(new[] { 1, 1, 2 }, host);   // row 2: NaN is skipped
    }
}
