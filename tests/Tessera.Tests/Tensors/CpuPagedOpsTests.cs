using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>Paged KV-cache ops against the dense ones on the same positions.</summary>
public class CpuPagedOpsTests
{
    private readonly CpuBackend _cpu = new(1);

    /// <summary>
    /// A flattened batch: sequence 0 prefills a 5-token chunk after 3 cached positions, sequence 1 decodes one token after
    /// 9, sequence 2 is padding (no context). Blocks of 4 positions are scattered over a pool of 12 in a shuffled order.
    /// </summary>
    internal sealed record Case(int[] Rows, int[] Contexts, int[][] Tables, int BlockSize, int PoolBlocks)
    {
        public static Case Mixed(Random rng)
        {
            int[] rows = [5, 1, 1], contexts = [8, 10, 0];
            var free = Enumerable.Range(0, 12).OrderBy(_ => rng.Next()).ToList();
            var tables = contexts.Select(c => Enumerable.Range(0, (c + 3) / 4).Select(_ => { int b = free[0]; free.RemoveAt(0); return b; }).ToArray()).ToArray();
            return new Case(rows, contexts, tables, 4, 12);
        }

        public int N => Rows.Sum();

        public PagedBatch Upload(IBackend backend)
        {
            int b = Rows.Length, maxBlocks = Tables.Max(t => t.Length) + 1;
            var starts = new int[b + 1];
            for (int i = 0; i < b; i++) starts[i + 1] = starts[i] + Rows[i];
            var tables = new int[b * maxBlocks];
            for (int i = 0; i < b; i++) Tables[i].CopyTo(tables, i * maxBlocks);
            var slots = new int[N];
            for (int i = 0, r = 0; i < b; i++)
                for (int j = 0; j < Rows[i]; j++, r++)
                {
                    int p = Contexts[i] - Rows[i] + j;
                    slots[r] = p < 0 ? -1 : Tables[i][p / BlockSize] * BlockSize + p % BlockSize;
                }
            return new PagedBatch(backend.FromArray(tables, b, maxBlocks), backend.FromArray(starts, b + 1),
                backend.FromArray(Contexts.ToArray(), b), backend.FromArray(slots, N), BlockSize);
        }
    }

    [Fact]
    public void PagedAttentionEqualsDenseCausalAttentionOverEachSequencesPositions()
    {
        const int seed = 41, h = 4, k = 2, d = 8;
        var rng = new Random(seed);
        var c = Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        var pool = TestTensors.RandomNormal(_cpu, rng, DType.F64, c.PoolBlocks, c.BlockSize, 2 * k, d);
        var q = TestTensors.RandomNormal(_cpu, rng, DType.F64, c.N, h, d);
        var output = _cpu.Allocate(q.Shape, DType.F64);
        TestTensors.Poison(_cpu, output);
        _cpu.PagedAttention(q, pool, batch, output, 0.35);
        var actual = TestTensors.ToDoubles(_cpu, output);

        var poolHost = TestTensors.ToDoubles(_cpu, pool);
        var qHost = TestTensors.ToDoubles(_cpu, q);
        for (int s = 0, row = 0; s < c.Rows.Length; row += c.Rows[s], s++)
        {
            int context = c.Contexts[s], rows = c.Rows[s];
            if (context == 0)
            {
                Assert.All(actual.Skip(row * h * d).Take(rows * h * d), v => Assert.Equal(0.0, v));   // padding rows are zero
                continue;
            }
            // Dense keys and values gathered by hand from the table, then the dense op.
            var keys = new double[context * k * d];
            var values = new double[context * k * d];
            for (int p = 0; p < context; p++)
            {
                int slot = c.Tables[s][p / c.BlockSize] * c.BlockSize + p % c.BlockSize;
                Array.Copy(poolHost, (long)slot * 2 * k * d, keys, p * k * d, k * d);
                Array.Copy(poolHost, (long)slot * 2 * k * d + k * d, values, p * k * d, k * d);
            }
            var denseOut = _cpu.Allocate(new Shape(1, rows, h, d), DType.F64);
            _cpu.AttentionForward(_cpu.FromArray(qHost[(row * h * d)..((row + rows) * h * d)], 1, rows, h, d),
                _cpu.FromArray(keys, 1, context, k, d), _cpu.FromArray(values, 1, context, k, d), denseOut, null, 0.35);
            // The reference runs the same dense op on the same values: equal to the last bit.
            Assert.Equal(TestTensors.ToDoubles(_cpu, denseOut), actual[(row * h * d)..((row + rows) * h * d)]);
        }
    }

    /// <summary>
    /// A sliding window of 6 over blocks of 4: a 5-row chunk after 20 positions and a decode after 29. The blocks wholly left
    /// of each sequence's first row's window are -1 in the table (returned to the pool), which the op must never look up
    /// (it throws on an entry outside the pool); each row equals a direct masked softmax over its window's keys (F64: the
    /// same terms summed in another order, 1e-12 relative).
    /// </summary>
    [Fact]
    public void WindowedPagedAttentionReadsOnlyTheWindowAndEqualsADirectMaskedSoftmax()
    {
        const int seed = 43, h = 4, k = 2, d = 8, window = 6, bs = 4;
        var rng = new Random(seed);
        int[] rows = [5, 1, 1], contexts = [25, 30, 0];
        var free = Enumerable.Range(0, 16).OrderBy(_ => rng.Next()).ToList();
        var tables = new int[rows.Length][];
        for (int s = 0; s < rows.Length; s++)
        {
            int first = Math.Max(0, contexts[s] - rows[s] - window + 1);
            tables[s] = Enumerable.Range(0, (contexts[s] + bs - 1) / bs).Select(i => { if ((i + 1) * bs <= first) return -1; int b = free[0]; free.RemoveAt(0); return b; }).ToArray();
        }
        Assert.Contains(-1, tables[0]);
        Assert.Contains(-1, tables[1]);
        var c = new Case(rows, contexts, tables, bs, 16);
        var batch = c.Upload(_cpu);
        var pool = TestTensors.RandomNormal(_cpu, rng, DType.F64, c.PoolBlocks, bs, 2 * k, d);
        var q = TestTensors.RandomNormal(_cpu, rng, DType.F64, c.N, h, d);
        var output = _cpu.Allocate(q.Shape, DType.F64);
        TestTensors.Poison(_cpu, output);
        _cpu.PagedAttention(q, pool, batch, output, 0.35, window);
        var actual = TestTensors.ToDoubles(_cpu, output);
        Assert.Throws<ArgumentException>(() => _cpu.PagedAttention(q, pool, batch, output, 0.35));   // without the window it reaches a -1 entry

        var poolHost = TestTensors.ToDoubles(_cpu, pool);
        var qHost = TestTensors.ToDoubles(_cpu, q);
        var expected = new double[actual.Length];
        for (int s = 0, row = 0; s < rows.Length; row += rows[s], s++)
            for (int t = 0; t < rows[s]; t++)
            {
                int p = contexts[s] - rows[s] + t;
                if (p < 0) continue;                                     // padding: zeros
                for (int head = 0; head < h; head++)
                {
                    int kvh = head / (h / k), lo = Math.Max(0, p - window + 1);
                    var scores = new double[p - lo + 1];
                    for (int j = lo; j <= p; j++)
                    {
                        long slot = (long)tables[s][j / bs] * bs + j % bs;
                        double dot = 0;
                        for (int e = 0; e < d; e++) dot += qHost[((row + t) * h + head) * d + e] * poolHost[(slot * 2 * k + kvh) * d + e];
                        scores[j - lo] = dot * 0.35;
                    }
                    double max = scores.Max(), sum = scores.Sum(x => Math.Exp(x - max));
                    for (int j = lo; j <= p; j++)
                    {
                        long slot = (long)tables[s][j / bs] * bs + j % bs;
                        double w = Math.Exp(scores[j - lo] - max) / sum;
                        for (int e = 0; e < d; e++) expected[((row + t) * h + head) * d + e] += w * poolHost[(slot * 2 * k + k + kvh) * d + e];
                    }
                }
            }
        NumericAssert.Close(expected, actual, 1e-12, "windowed paged attention");
    }

    [Fact]
    public void PagedAppendWritesEachRowToItsSlotAndSkipsNegativeSlots()
    {
        const int seed = 42, r = 4, d = 3;
        var rng = new Random(seed);
        var c = Case.Mixed(rng);
        var batch = c.Upload(_cpu);
        var pool = _cpu.Allocate(new Shape(c.PoolBlocks, c.BlockSize, r, d), DType.F32);
        _cpu.Fill(pool, -7);
        // A strided source, as the k and v heads of a fused QKV activation are: rows of 6 heads, heads 2..5 taken.
        var qkv = TestTensors.RandomNormal(_cpu, rng, DType.F32, c.N, 6, d);
        _cpu.PagedAppend(qkv.Slice(1, 2, r), pool, batch);
        var written = TestTensors.ToDoubles(_cpu, pool);
        var source = TestTensors.ToDoubles(_cpu, qkv);
        var slots = _cpu.ToArray<int>(batch.Slots);
        var touched = new HashSet<int>();
        for (int n = 0; n < c.N; n++)
        {
            if (slots[n] < 0) continue;
            touched.Add(slots[n]);
            for (int e = 0; e < r * d; e++) Assert.Equal(source[n * 6 * d + 2 * d + e], written[slots[n] * r * d + e]);
        }
        for (int slot = 0; slot < c.PoolBlocks * c.BlockSize; slot++)
            if (!touched.Contains(slot)) Assert.All(written.Skip(slot * r * d).Take(r * d), v => Assert.Equal(-7.0, v));
    }
}
