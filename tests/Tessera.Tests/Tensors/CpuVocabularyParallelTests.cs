using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The shard-local ops of the vocabulary-parallel embedding and cross-entropy against the whole-vocabulary ops, in F64:
/// a vocabulary of 37 real ids padded to 40, split over 4 shards of 10 (the last one holds 7 real columns and the padding),
/// targets in every shard and one ignored row. The shard statistics combined in shard order and the whole-row fused
/// CrossEntropy are the same log-sum-exp computed in another order: 1e-12 relative. The embedding lookups add exact
/// copies and zeros: bit-identical.
/// </summary>
public sealed class CpuVocabularyParallelTests
{
    private const int N = 6, V = 37, Padded = 40, Shards = 4, Local = Padded / Shards, C = 5;
    private readonly CpuBackend _cpu = new(1);

    [Fact]
    public void ShardStatisticsCombineIntoTheWholeVocabularysLossAndGradient()
    {
        var rng = new Random(3);
        var logits = TestTensors.Normal(rng, N * Padded, scale: 3);
        int[] targets = [0, 9, 10, 25, 36, -1];                       // first and last id, shard edges, an ignored row
        var whole = TestTensors.FromDoubles(_cpu, logits, DType.F64, N, Padded);
        var t = _cpu.FromHost<int>(targets, new Shape(N));
        var expectedLoss = _cpu.Zeros(new Shape(N), DType.F64);
        var realColumns = whole.Slice(1, 0, V);
        var expectedGrad = _cpu.Zeros(new Shape(N, V), DType.F64);
        _cpu.CrossEntropy(realColumns, t, expectedLoss, expectedGrad, lossScale: 0.25);

        var statistics = _cpu.Zeros(new Shape(Shards, N, 3), DType.F64);
        for (int s = 0; s < Shards; s++)
        {
            var shard = whole.Slice(1, s * Local, Local);             // (N, Local), rows Padded apart
            _cpu.CrossEntropyStatistics(shard, t, s * Local, Math.Clamp(V - s * Local, 0, Local), statistics.Select(0, s));
        }
        var losses = _cpu.Zeros(new Shape(N), DType.F64);
        var lse = _cpu.Zeros(new Shape(N), DType.F64);
        _cpu.CrossEntropyCombine(statistics, t, losses, lse);
        NumericAssert.Close(TestTensors.ToDoubles(_cpu, expectedLoss), TestTensors.ToDoubles(_cpu, losses), 1e-12, "loss");

        var gradient = _cpu.Zeros(new Shape(N, Padded), DType.F64);
        for (int s = 0; s < Shards; s++)
            _cpu.CrossEntropyGradient(whole.Slice(1, s * Local, Local), t, s * Local, Math.Clamp(V - s * Local, 0, Local), lse,
                gradient.Slice(1, s * Local, Local), lossScale: 0.25);
        var got = TestTensors.ToDoubles(_cpu, gradient);
        var want = TestTensors.ToDoubles(_cpu, expectedGrad);
        for (int r = 0; r < N; r++)
        {
            NumericAssert.Close(want.AsSpan(r * V, V).ToArray(), got.AsSpan(r * Padded, V).ToArray(), 1e-12, $"gradient row {r}");
            Assert.All(got.AsSpan(r * Padded + V, Padded - V).ToArray(), x => Assert.Equal(0.0, x));   // padding columns
        }
    }

    [Fact]
    public void ShardLookupsSumToTheWholeLookupAndScatterOnlyTheirRows()
    {
        var rng = new Random(4);
        var table = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, Padded * C), DType.F64, Padded, C);
        var ids = _cpu.FromHost<int>([0, 9, 10, 25, 39, 12], new Shape(N));
        var expected = _cpu.Zeros(new Shape(N, C), DType.F64);
        _cpu.EmbeddingForward(ids, table, expected);
        var sum = new double[N * C];
        var dy = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, N * C), DType.F64, N, C);
        var expectedGrad = _cpu.Zeros(new Shape(Padded, C), DType.F64);
        _cpu.EmbeddingBackward(ids, dy, expectedGrad);
        var grads = new double[Padded * C];
        for (int s = 0; s < Shards; s++)
        {
            var rows = table.Narrow(s * Local * C, new Shape(Local, C));
            var part = _cpu.Zeros(new Shape(N, C), DType.F64);
            _cpu.EmbeddingShardForward(ids, rows, s * Local, part);
            var values = TestTensors.ToDoubles(_cpu, part);
            for (int i = 0; i < sum.Length; i++) sum[i] += values[i];
            var dRows = _cpu.Zeros(new Shape(Local, C), DType.F64);
            _cpu.EmbeddingShardBackward(ids, dy, s * Local, dRows);
            TestTensors.ToDoubles(_cpu, dRows).CopyTo(grads, s * Local * C);
        }
        Assert.Equal(TestTensors.ToDoubles(_cpu, expected), sum);
        Assert.Equal(TestTensors.ToDoubles(_cpu, expectedGrad), grads);
    }
}
