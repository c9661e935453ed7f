using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The paged ops over an int8 pool (<see cref="PagedKvPool"/>): the append quantizes each (position, head) row within half
/// a step, and attention over the int8 pool is exactly attention over a floating-point pool holding what its values stand
/// for (scale x value), the oracle every backend's int8 cache is held to.
/// </summary>
public class CpuInt8PagedOpsTests
{
    private readonly CpuBackend _cpu = new(1);
    private readonly ITestOutputHelper _output;

    public CpuInt8PagedOpsTests(ITestOutputHelper output) => _output = output;

    /// <summary>
    /// Every written (row, head) of the step comes back within half its scale of the value appended: |x - s q| &lt;= s / 2,
    /// with a margin of 1e-4 s (the quantization multiplies by 127 / max in F32 rather than dividing by s: a few F32 roundings
    /// of a quotient of at most 127) plus 2^-23 |x| for F64 input (rounded to F32 first, as the GPU sees it). A row's
    /// largest value is ±127, its scale max|row| / 127 in F32; a zero row has scale 0 and zero values; a padding row (slot
    /// -1) writes nothing; and the bytes equal <see cref="Int8Quantization.QuantizeRow"/> on the same row (one helper).
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 61)]
    [InlineData(DType.F64, 62)]
    public void PagedAppendToAnInt8PoolRoundTripsWithinHalfAScale(DType dtype, int seed)
    {
        _output.WriteLine($"seed {seed}");
        const int k = 2, d = 16;
        var rng = new Random(seed);
        var c = CpuPagedOpsTests.Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        var kvHost = TestTensors.Normal(rng, (long)c.N * 2 * k * d, scale: 3.0);
        Array.Clear(kvHost, (1 * 2 * k + 3) * d, d);                          // row 1, head 3 (a value head): all zeros
        var kv = TestTensors.FromDoubles(_cpu, kvHost, dtype, c.N, 2 * k, d);
        var pool = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k, d), DType.I8);
        var scales = _cpu.Allocate(PagedKvPool.ScalesShape(pool), DType.F32);
        _cpu.Fill(pool, 99);
        _cpu.Fill(scales, -5);                                                 // untouched slots keep these
        _cpu.PagedAppend(kv, pool, batch, scales);

        var values = _cpu.ToArray<sbyte>(pool);
        var s = _cpu.ToArray<float>(scales);
        var slots = _cpu.ToArray<int>(batch.Slots);
        var written = new HashSet<int>(slots.Where(x => x >= 0));
        for (int slot = 0; slot < c.PoolBlocks * c.BlockSize; slot++)
            if (!written.Contains(slot))
                for (int r = 0; r < 2 * k; r++)
                {
                    Assert.Equal(-5f, s[slot * 2 * k + r]);
                    Assert.Equal(99, values[((long)slot * 2 * k + r) * d]);
                }
        Assert.Contains(-1, slots);                                            // the padding row
        var row = new float[d];
        var expected = new sbyte[d];
        for (int n = 0; n < c.N; n++)
        {
            if (slots[n] < 0) continue;
            for (int r = 0; r < 2 * k; r++)
            {
                long at = ((long)n * 2 * k + r) * d, to = ((long)slots[n] * 2 * k + r) * d;
                float scale = s[slots[n] * 2 * k + r];
                double max = 0;
                for (int i = 0; i < d; i++)
                {
                    row[i] = (float)kvHost[at + i];
                    if (dtype == DType.F32) kvHost[at + i] = row[i];                 // what the F32 tensor held
                    max = Math.Max(max, Math.Abs(row[i]));
                }
                Assert.Equal((float)max / 127f, scale);
                Assert.Equal(Int8Quantization.QuantizeRow(row, expected), scale);
                Assert.Equal(expected, values.AsSpan((int)to, d).ToArray());
                if (max == 0) { Assert.Equal(0f, scale); Assert.All(expected, v => Assert.Equal(0, v)); continue; }
                Assert.Contains(expected, v => Math.Abs(v) == 127);
                for (int i = 0; i < d; i++)
                {
                    double x = kvHost[at + i], error = Math.Abs(x - (double)scale * values[to + i]);
                    Assert.True(error <= scale * (0.5 + 1e-4) + Math.Abs(x) * Math.Pow(2, -23),
                        $"row {n} head {r} element {i}: {x} came back as {scale} x {values[to + i]} (error {error}, scale {scale})");
                }
            }
        }
        Assert.Contains(0f, s);                                                // the zero row was written
    }

    /// <summary>
    /// The oracle: over random int8 values and scales (one (position, head) row with scale 0), PagedAttention over the I8
    /// pool equals PagedAttention over an F64 (or F32) pool holding scale x value (computed here in double, exact, then
    /// rounded once to F32), bit for bit: the CPU gathers the same numbers and runs the same dense attention. A mixed batch
    /// (a 5-row prefill chunk, a decode row, a padding sequence) and the same with a sliding window of 6.
    /// </summary>
    [Theory]
    [InlineData(DType.F64, 0, 71)]
    [InlineData(DType.F64, 6, 72)]
    [InlineData(DType.F32, 0, 73)]
    public void PagedAttentionOverAnInt8PoolEqualsAttentionOverTheValuesItStandsFor(DType dtype, int window, int seed)
    {
        _output.WriteLine($"seed {seed}");
        const int h = 4, k = 2, d = 8;
        var rng = new Random(seed);
        var c = CpuPagedOpsTests.Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        var (pool, scales, dequantized) = RandomInt8Pool(_cpu, rng, c.PoolBlocks, c.BlockSize, k, d, dtype);
        var q = TestTensors.RandomNormal(_cpu, rng, dtype, c.N, h, d);
        var int8Out = _cpu.Allocate(q.Shape, dtype);
        var floatOut = _cpu.Allocate(q.Shape, dtype);
        TestTensors.Poison(_cpu, int8Out);
        TestTensors.Poison(_cpu, floatOut);
        _cpu.PagedAttention(q, pool, batch, int8Out, 0.35, window, scales);
        _cpu.PagedAttention(q, dequantized, batch, floatOut, 0.35, window);
        var actual = TestTensors.ToDoubles(_cpu, int8Out);
        Assert.All(actual, v => Assert.True(double.IsFinite(v)));
        Assert.Equal(TestTensors.ToDoubles(_cpu, floatOut), actual);
    }

    /// <summary>
    /// The fused attention input over an I8 pool (norm, QKV product, RoPE, append) equals its parts: the same q heads, and the
    /// same int8 values and scales as <see cref="IBackend.PagedAppend"/> of the rotated k and v heads, bit for bit.
    /// </summary>
    [Fact]
    public void MatMulRopePagedAppendIntoAnInt8PoolEqualsItsParts()
    {
        const int seed = 75, h = 4, k = 2, d = 8, c = 24;
        _output.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        var cs = CpuPagedOpsTests.Case.Mixed(rng);
        var batch = cs.Upload(_cpu);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F32, cs.N, c);
        var weight = TestTensors.RandomNormal(_cpu, rng, DType.F32, (h + 2 * k) * d, c);
        var positions = _cpu.FromArray(Enumerable.Range(0, cs.N).Select(i => 3 + i).ToArray(), cs.N);
        var frequencies = new RopeFrequencies(10000.0);
        var poolShape = new Shape(cs.PoolBlocks, cs.BlockSize, 2 * k, d);
        var (fusedPool, fusedScales) = (_cpu.Allocate(poolShape, DType.I8), _cpu.Allocate(new Shape(cs.PoolBlocks, cs.BlockSize, 2 * k), DType.F32));
        var (partsPool, partsScales) = (_cpu.Allocate(poolShape, DType.I8), _cpu.Allocate(new Shape(cs.PoolBlocks, cs.BlockSize, 2 * k), DType.F32));
        foreach (var t in new[] { fusedPool, partsPool, fusedScales, partsScales }) _cpu.Fill(t, 0);
        var fused = _cpu.Allocate(new Shape(cs.N, h + 2 * k, d), DType.F32);
        _cpu.MatMulRopePagedAppend(x, null, weight, null, fused, h, fusedPool, positions, batch, frequencies, fusedScales);

        var parts = _cpu.Allocate(new Shape(cs.N, h + 2 * k, d), DType.F32);
        _cpu.MatMul(x, weight, parts.Reshape(cs.N, (h + 2 * k) * d), transposeB: true);
        _cpu.Rope(parts.Reshape(cs.N, 1, h + 2 * k, d).Slice(2, 0, h + k), positions, frequencies);
        _cpu.PagedAppend(parts.Slice(1, h, 2 * k), partsPool, batch, partsScales);
        Assert.Equal(_cpu.ToArray<float>(parts), _cpu.ToArray<float>(fused));
        Assert.Equal(_cpu.ToArray<sbyte>(partsPool), _cpu.ToArray<sbyte>(fusedPool));
        Assert.Equal(_cpu.ToArray<float>(partsScales), _cpu.ToArray<float>(fusedScales));
    }

    /// <summary>Scales are required with an I8 pool and refused without one, of shape (Blocks, BlockSize, 2K) F32; each
    /// mismatch is an <see cref="ArgumentException"/> naming poolScales or the pool.</summary>
    [Fact]
    public void MismatchedPoolsAndScalesAreRefusedByName()
    {
        var rng = new Random(77);
        var c = CpuPagedOpsTests.Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        const int h = 4, k = 2, d = 8;
        var q = TestTensors.RandomNormal(_cpu, rng, DType.F32, c.N, h, d);
        var kv = TestTensors.RandomNormal(_cpu, rng, DType.F32, c.N, 2 * k, d);
        var output = _cpu.Allocate(q.Shape, DType.F32);
        var int8Pool = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k, d), DType.I8);
        var floatPool = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k, d), DType.F32);
        var scales = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k), DType.F32);
        var wrongShape = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, k), DType.F32);
        var wrongType = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k), DType.F64);

        Assert.Contains("poolScales", Assert.Throws<ArgumentException>(() => _cpu.PagedAppend(kv, int8Pool, batch)).Message);
        Assert.Contains("poolScales", Assert.Throws<ArgumentException>(() => _cpu.PagedAttention(q, int8Pool, batch, output, 0.3)).Message);
        Assert.Contains("only for an I8 pool", Assert.Throws<ArgumentException>(() => _cpu.PagedAppend(kv, floatPool, batch, scales)).Message);
        Assert.Contains("only for an I8 pool", Assert.Throws<ArgumentException>(() => _cpu.PagedAttention(q, floatPool, batch, output, 0.3, 0, scales)).Message);
        Assert.Contains("one scale per position and head", Assert.Throws<ArgumentException>(() => _cpu.PagedAppend(kv, int8Pool, batch, wrongShape)).Message);
        Assert.Contains("one scale per position and head", Assert.Throws<ArgumentException>(() => _cpu.PagedAttention(q, int8Pool, batch, output, 0.3, 0, wrongType)).Message);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F32, c.N, 16);
        var w = TestTensors.RandomNormal(_cpu, rng, DType.F32, (h + 2 * k) * d, 16);
        var qkv = _cpu.Allocate(new Shape(c.N, h + 2 * k, d), DType.F32);
        var positions = _cpu.FromArray(new int[c.N], c.N);
        Assert.Contains("poolScales", Assert.Throws<ArgumentException>(() =>
            _cpu.MatMulRopePagedAppend(x, null, w, null, qkv, h, int8Pool, positions, batch, new RopeFrequencies(10000.0))).Message);
    }

    /// <summary>
    /// A pool (blocks, blockSize, 2K, D) of random int8 values in [-127, 127] with random positive scales (row 0, head 0 of
    /// block 0 scale 0), and a pool of <paramref name="dtype"/> holding scale x value (exact in double, rounded once to F32).
    /// </summary>
    internal static (Tensor Pool, Tensor Scales, Tensor Dequantized) RandomInt8Pool(IBackend backend, Random rng, int blocks, int blockSize,
        int k, int d, DType dtype)
    {
        int rows = blocks * blockSize * 2 * k;
        var values = new sbyte[rows * d];
        for (int i = 0; i < values.Length; i++) values[i] = (sbyte)rng.Next(-127, 128);
        var scales = new float[rows];
        for (int i = 0; i < rows; i++) scales[i] = (float)(0.005 + 0.03 * rng.NextDouble());
        scales[0] = 0f;
        var dequantized = new double[values.Length];
        for (int i = 0; i < values.Length; i++) dequantized[i] = (double)scales[i / d] * values[i];
        return (backend.FromArray(values, blocks, blockSize, 2 * k, d), backend.FromArray(scales, blocks, blockSize, 2 * k),
            TestTensors.FromDoubles(backend, dequantized, dtype, blocks, blockSize, 2 * k, d));
    }
}
