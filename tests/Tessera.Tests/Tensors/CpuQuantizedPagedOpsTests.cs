using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The paged ops over a quantized pool (<see cref="PagedKvPool"/>: I8 values or F8E4M3 codes, a scale per position and
/// head): the append quantizes each (position, head) row within half a code step, and attention over the quantized pool is
/// exactly attention over a floating-point pool holding what its codes stand for (scale x value), the oracle every
/// backend's quantized cache is held to. Each test runs for both codes.
/// </summary>
public class CpuQuantizedPagedOpsTests
{
    private readonly CpuBackend _cpu = new(1);
    private readonly ITestOutputHelper _output;

    public CpuQuantizedPagedOpsTests(ITestOutputHelper output) => _output = output;

    /// <summary>
    /// Every written (row, head) of the step comes back within half a code step of the value appended, and the bytes equal
    /// <see cref="PagedKvPool.QuantizeRow"/> on the same row (the one helper both backends' appends follow). I8: scale
    /// max|row| / 127 in F32, |x - s q| &lt;= s / 2 with a margin of 1e-4 s (the quantization multiplies by 127 / max in F32
    /// rather than dividing by s: a few F32 roundings of a quotient of at most 127); a row's largest value is ±127. F8E4M3:
    /// scale max|row| / 448 in F32, y = x / s is within half an E4M3 step of its code's value, 2^(E - 4) for y's binade
    /// 2^E (E at least -6: the subnormals' steps are 2^-9), plus 2^-23 |y| for the F32 division; a row's largest code is
    /// ±448 (0x7E). Both: plus 2^-23 |x| for F64 input (rounded to F32 first, as the GPU sees it); a zero row has scale 0
    /// and zero codes; a padding row (slot -1) writes nothing. One head's values span 3 down to 3e-6, reaching E4M3's
    /// subnormals.
    /// </summary>
    [Theory]
    [InlineData(DType.I8, DType.F32, 61)]
    [InlineData(DType.I8, DType.F64, 62)]
    [InlineData(DType.F8E4M3, DType.F32, 63)]
    [InlineData(DType.F8E4M3, DType.F64, 64)]
    public void PagedAppendToAQuantizedPoolRoundTripsWithinHalfACodeStep(DType poolDType, DType dtype, int seed)
    {
        _output.WriteLine($"seed {seed}");
        const int k = 2, d = 16;
        var rng = new Random(seed);
        var c = CpuPagedOpsTests.Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        var kvHost = TestTensors.Normal(rng, (long)c.N * 2 * k * d, scale: 3.0);
        Array.Clear(kvHost, (1 * 2 * k + 3) * d, d);                          // row 1, head 3 (a value head): all zeros
        for (int i = 0; i < d; i++)                                            // row 0, head 1: 3 down to 3e-6
            kvHost[(0 * 2 * k + 1) * d + i] = (i % 2 == 0 ? 3 : -3) * Math.Pow(10, -6.0 * i / (d - 1));
        var kv = TestTensors.FromDoubles(_cpu, kvHost, dtype, c.N, 2 * k, d);
        var pool = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k, d), poolDType);
        var scales = _cpu.Allocate(PagedKvPool.ScalesShape(pool), DType.F32);
        _cpu.Fill(pool, 7);
        _cpu.Fill(scales, -5);                                                 // untouched slots keep these
        byte poison = Codes(_cpu, pool)[0];
        _cpu.PagedAppend(kv, pool, batch, scales);

        var codes = Codes(_cpu, pool);
        var value = PagedKvPool.CodeValues(poolDType).ToArray();
        var s = _cpu.ToArray<float>(scales);
        var slots = _cpu.ToArray<int>(batch.Slots);
        var written = new HashSet<int>(slots.Where(x => x >= 0));
        for (int slot = 0; slot < c.PoolBlocks * c.BlockSize; slot++)
            if (!written.Contains(slot))
                for (int r = 0; r < 2 * k; r++)
                {
                    Assert.Equal(-5f, s[slot * 2 * k + r]);
                    Assert.Equal(poison, codes[((long)slot * 2 * k + r) * d]);
                }
        Assert.Contains(-1, slots);                                            // the padding row
        bool fp8 = poolDType == DType.F8E4M3;
        float levels = fp8 ? Float8E4M3.MaxValue : Int8Quantization.Levels;
        var row = new float[d];
        var expected = new byte[d];
        int subnormals = 0;
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
                Assert.Equal((float)max / levels, scale);
                Assert.Equal(PagedKvPool.QuantizeRow(poolDType, row, expected), scale);
                Assert.Equal(expected, codes.AsSpan((int)to, d).ToArray());
                if (max == 0) { Assert.Equal(0f, scale); Assert.All(expected, v => Assert.Equal(0, v)); continue; }
                Assert.Contains(expected, v => Math.Abs(value[v]) == levels);
                for (int i = 0; i < d; i++)
                {
                    double x = kvHost[at + i], back = (double)scale * value[codes[to + i]], error = Math.Abs(x - back);
                    double bound;
                    if (fp8)
                    {
                        double y = Math.Abs(x / scale);
                        int binade = y > 0 ? Math.Max((int)Math.Floor(Math.Log2(y)), -6) : -6;
                        bound = scale * (Math.Pow(2, binade - 4) + y * Math.Pow(2, -23));
                        if ((codes[to + i] & 0x78) == 0 && (codes[to + i] & 0x07) != 0) subnormals++;
                    }
                    else bound = scale * (0.5 + 1e-4);
                    Assert.True(error <= bound + Math.Abs(x) * Math.Pow(2, -23),
                        $"row {n} head {r} element {i}: {x} came back as {scale} x {value[codes[to + i]]} (error {error}, bound {bound})");
                }
            }
        }
        Assert.Contains(0f, s);                                                // the zero row was written
        if (fp8) Assert.True(subnormals > 0, "no value reached E4M3's subnormals");
    }

    /// <summary>
    /// The oracle: over random codes (I8 in [-127, 127]; F8E4M3 any code but the two NaNs) and scales (one (position, head)
    /// row with scale 0), PagedAttention over the quantized pool equals PagedAttention over an F64 (or F32) pool holding scale
    /// x value (computed here in double, exact: a code has at most 8 significant bits, then rounded once to F32), bit for bit:
    /// the CPU gathers the same numbers and runs the same dense attention. A mixed batch (a 5-row prefill chunk, a decode row,
    /// a padding sequence) and the same with a sliding window of 6.
    /// </summary>
    [Theory]
    [InlineData(DType.I8, DType.F64, 0, 71)]
    [InlineData(DType.I8, DType.F64, 6, 72)]
    [InlineData(DType.I8, DType.F32, 0, 73)]
    [InlineData(DType.F8E4M3, DType.F64, 0, 81)]
    [InlineData(DType.F8E4M3, DType.F64, 6, 82)]
    [InlineData(DType.F8E4M3, DType.F32, 0, 83)]
    public void PagedAttentionOverAQuantizedPoolEqualsAttentionOverTheValuesItStandsFor(DType poolDType, DType dtype, int window, int seed)
    {
        _output.WriteLine($"seed {seed}");
        const int h = 4, k = 2, d = 8;
        var rng = new Random(seed);
        var c = CpuPagedOpsTests.Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        var (pool, scales, dequantized) = RandomQuantizedPool(_cpu, rng, poolDType, c.PoolBlocks, c.BlockSize, k, d, dtype);
        var q = TestTensors.RandomNormal(_cpu, rng, dtype, c.N, h, d);
        var quantizedOut = _cpu.Allocate(q.Shape, dtype);
        var floatOut = _cpu.Allocate(q.Shape, dtype);
        TestTensors.Poison(_cpu, quantizedOut);
        TestTensors.Poison(_cpu, floatOut);
        _cpu.PagedAttention(q, pool, batch, quantizedOut, 0.35, window, scales);
        _cpu.PagedAttention(q, dequantized, batch, floatOut, 0.35, window);
        var actual = TestTensors.ToDoubles(_cpu, quantizedOut);
        Assert.All(actual, v => Assert.True(double.IsFinite(v)));
        Assert.Equal(TestTensors.ToDoubles(_cpu, floatOut), actual);
    }

    /// <summary>
    /// The fused attention input over a quantized pool (norm, QKV product, RoPE, append) equals its parts: the same q heads,
    /// and the same codes and scales as <see cref="IBackend.PagedAppend"/> of the rotated k and v heads, bit for bit.
    /// </summary>
    [Theory]
    [InlineData(DType.I8)]
    [InlineData(DType.F8E4M3)]
    public void MatMulRopePagedAppendIntoAQuantizedPoolEqualsItsParts(DType poolDType)
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
        var (fusedPool, fusedScales) = (_cpu.Allocate(poolShape, poolDType), _cpu.Allocate(new Shape(cs.PoolBlocks, cs.BlockSize, 2 * k), DType.F32));
        var (partsPool, partsScales) = (_cpu.Allocate(poolShape, poolDType), _cpu.Allocate(new Shape(cs.PoolBlocks, cs.BlockSize, 2 * k), DType.F32));
        foreach (var t in new[] { fusedPool, partsPool, fusedScales, partsScales }) _cpu.Fill(t, 0);
        var fused = _cpu.Allocate(new Shape(cs.N, h + 2 * k, d), DType.F32);
        _cpu.MatMulRopePagedAppend(x, null, weight, null, fused, h, fusedPool, positions, batch, frequencies, fusedScales);

        var parts = _cpu.Allocate(new Shape(cs.N, h + 2 * k, d), DType.F32);
        _cpu.MatMul(x, weight, parts.Reshape(cs.N, (h + 2 * k) * d), transposeB: true);
        _cpu.Rope(parts.Reshape(cs.N, 1, h + 2 * k, d).Slice(2, 0, h + k), positions, frequencies);
        _cpu.PagedAppend(parts.Slice(1, h, 2 * k), partsPool, batch, partsScales);
        Assert.Equal(_cpu.ToArray<float>(parts), _cpu.ToArray<float>(fused));
        Assert.Equal(Codes(_cpu, partsPool), Codes(_cpu, fusedPool));
        Assert.Equal(_cpu.ToArray<float>(partsScales), _cpu.ToArray<float>(fusedScales));
        Assert.Contains(_cpu.ToArray<float>(fusedScales), v => v > 0);          // something was written
    }

    /// <summary>Scales are required with a quantized pool and refused without one, of shape (Blocks, BlockSize, 2K) F32;
    /// each mismatch is an <see cref="ArgumentException"/> naming poolScales or the pool.</summary>
    [Theory]
    [InlineData(DType.I8)]
    [InlineData(DType.F8E4M3)]
    public void MismatchedPoolsAndScalesAreRefusedByName(DType poolDType)
    {
        var rng = new Random(77);
        var c = CpuPagedOpsTests.Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        const int h = 4, k = 2, d = 8;
        var q = TestTensors.RandomNormal(_cpu, rng, DType.F32, c.N, h, d);
        var kv = TestTensors.RandomNormal(_cpu, rng, DType.F32, c.N, 2 * k, d);
        var output = _cpu.Allocate(q.Shape, DType.F32);
        var quantizedPool = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k, d), poolDType);
        var floatPool = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k, d), DType.F32);
        var scales = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k), DType.F32);
        var wrongShape = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, k), DType.F32);
        var wrongType = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, 2 * k), DType.F64);

        Assert.Contains($"is {poolDType}, so poolScales", Assert.Throws<ArgumentException>(() => _cpu.PagedAppend(kv, quantizedPool, batch)).Message);
        Assert.Contains("poolScales", Assert.Throws<ArgumentException>(() => _cpu.PagedAttention(q, quantizedPool, batch, output, 0.3)).Message);
        Assert.Contains("only for an I8 or F8E4M3 pool", Assert.Throws<ArgumentException>(() => _cpu.PagedAppend(kv, floatPool, batch, scales)).Message);
        Assert.Contains("only for an I8 or F8E4M3 pool", Assert.Throws<ArgumentException>(() => _cpu.PagedAttention(q, floatPool, batch, output, 0.3, 0, scales)).Message);
        Assert.Contains("one scale per position and head", Assert.Throws<ArgumentException>(() => _cpu.PagedAppend(kv, quantizedPool, batch, wrongShape)).Message);
        Assert.Contains("one scale per position and head", Assert.Throws<ArgumentException>(() => _cpu.PagedAttention(q, quantizedPool, batch, output, 0.3, 0, wrongType)).Message);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F32, c.N, 16);
        var w = TestTensors.RandomNormal(_cpu, rng, DType.F32, (h + 2 * k) * d, 16);
        var qkv = _cpu.Allocate(new Shape(c.N, h + 2 * k, d), DType.F32);
        var positions = _cpu.FromArray(new int[c.N], c.N);
        Assert.Contains("poolScales", Assert.Throws<ArgumentException>(() =>
            _cpu.MatMulRopePagedAppend(x, null, w, null, qkv, h, quantizedPool, positions, batch, new RopeFrequencies(10000.0))).Message);
        Assert.Contains("poolScales", Assert.Throws<ArgumentException>(() =>
            _cpu.RopePagedAppend(qkv, h, quantizedPool, positions, batch, new RopeFrequencies(10000.0))).Message);
        Assert.Contains($"must hold {h + 1} query heads", Assert.Throws<ArgumentException>(() =>
            _cpu.RopePagedAppend(qkv, h + 1, quantizedPool, positions, batch, new RopeFrequencies(10000.0), scales)).Message);
    }

    /// <summary>The bytes of a quantized <paramref name="pool"/> (I8 values as their two's-complement bytes, or E4M3 codes).</summary>
    internal static byte[] Codes(IBackend backend, Tensor pool) =>
        pool.DType == DType.I8 ? backend.ToArray<sbyte>(pool).Select(v => (byte)v).ToArray() : backend.ToArray<byte>(pool);

    /// <summary>
    /// A pool (blocks, blockSize, 2K, D) of <paramref name="poolDType"/> holding random codes (I8: values in [-127, 127];
    /// F8E4M3: any code but the NaNs 0x7F and 0xFF) with random positive scales (row 0, head 0 of block 0 scale 0), and a
    /// pool of <paramref name="dtype"/> holding scale x value (exact in double, rounded once to F32).
    /// </summary>
    internal static (Tensor Pool, Tensor Scales, Tensor Dequantized) RandomQuantizedPool(IBackend backend, Random rng, DType poolDType, int blocks,
        int blockSize, int k, int d, DType dtype)
    {
        int rows = blocks * blockSize * 2 * k;
        var codes = new byte[rows * d];
        for (int i = 0; i < codes.Length; i++)
        {
            int code = poolDType == DType.I8 ? rng.Next(-127, 128) : rng.Next(0, 254);    // E4M3: one of the 254 codes that are not NaN
            codes[i] = poolDType == DType.I8 ? (byte)(sbyte)code : (byte)(code >= 0x7F ? code + 1 : code);
        }
        // Magnitudes up to ~4 either way: 127 x 0.035 for int8, 448 x 0.009 for E4M3.
        var scales = new float[rows];
        for (int i = 0; i < rows; i++) scales[i] = (float)(poolDType == DType.I8 ? 0.005 + 0.03 * rng.NextDouble() : 0.001 + 0.008 * rng.NextDouble());
        scales[0] = 0f;
        var value = PagedKvPool.CodeValues(poolDType).ToArray();
        var dequantized = new double[codes.Length];
        for (int i = 0; i < codes.Length; i++) dequantized[i] = (double)scales[i / d] * value[codes[i]];
        var pool = poolDType == DType.I8
            ? backend.FromArray(codes.Select(b => (sbyte)b).ToArray(), blocks, blockSize, 2 * k, d)
            : backend.FromArray(codes, blocks, blockSize, 2 * k, d);
        return (pool, backend.FromArray(scales, blocks, blockSize, 2 * k),
            TestTensors.FromDoubles(backend, dequantized, dtype, blocks, blockSize, 2 * k, d));
    }
}
