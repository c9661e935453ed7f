using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Distributed;

/// <summary>ProcessGroup.AllToAll on in-process thread ranks: the exact rows each rank receives, zero-size splits, checked arguments.</summary>
public class AllToAllTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private readonly CpuBackend _cpu = new(1);
    private const int Row = 3;   // elements per row: (rows, 3) tensors

    /// <summary>Row i of rank s's input: the values s * 1000 + i * 10 + c, so where each received row came from is readable.</summary>
    private static double Value(int source, int row, int c) => source * 1000 + row * 10 + c;

    [Theory]
    [InlineData(2, 101)] [InlineData(2, 102)] [InlineData(4, 401)] [InlineData(4, 402)] [InlineData(4, 403)]
    public void EveryRankReceivesItsPeersRowBlocksInRankOrder(int size, int seed)
    {
        output.WriteLine($"seed {seed}");
        var random = new Random(seed);
        // splits[s][d]: rows rank s sends rank d; about a third are zero, and some rank sends nothing at all.
        var splits = Enumerable.Range(0, size).Select(_ => Enumerable.Range(0, size).Select(_ => random.Next(3) == 0 ? 0 : random.Next(1, 5)).ToArray()).ToArray();
        Array.Clear(splits[random.Next(size)]);
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var received = new double[size][];
        RankThreads.Run(size, r =>
        {
            int rows = splits[r].Sum();
            var inputValues = new double[rows * Row];
            for (int i = 0; i < rows; i++) for (int c = 0; c < Row; c++) inputValues[i * Row + c] = Value(r, i, c);
            var input = _cpu.Allocate(new Shape(rows, Row), DType.F64);
            if (rows > 0) _cpu.CopyFromHost<double>(inputValues, input);
            var outputSplits = Enumerable.Range(0, size).Select(s => splits[s][r]).ToArray();
            var result = _cpu.Allocate(new Shape(outputSplits.Sum(), Row), DType.F64);
            groups[r].AllToAll(input, result, splits[r], outputSplits).Wait();
            received[r] = new double[result.NumElements];
            if (result.NumElements > 0) _cpu.CopyToHost<double>(result, received[r]);
            Assert.Equal(1, groups[r].Count(CollectiveKind.AllToAll));
            Assert.Equal(1, groups[r].CollectiveCount);
        });
        for (int d = 0; d < size; d++)
        {
            var expected = new List<double>();
            for (int s = 0; s < size; s++)
            {
                int first = splits[s].Take(d).Sum();
                for (int i = first; i < first + splits[s][d]; i++) for (int c = 0; c < Row; c++) expected.Add(Value(s, i, c));
            }
            Assert.Equal(expected, received[d]);   // exact: rows are moved, not computed
        }
    }

    [Fact]
    public void AnAllToAllOfOnlyZeroSplitsCompletes()
    {
        var groups = InProcessProcessGroup.Create(2, Timeout);
        RankThreads.Run(2, r =>
        {
            var empty = _cpu.Allocate(new Shape(0, Row), DType.F32);
            var result = _cpu.Allocate(new Shape(0, Row), DType.F32);
            groups[r].AllToAll(empty, result, [0, 0], [0, 0]).Wait();
        });
    }

    [Fact]
    public void MovesI32CountsAsTheSplitExchangeDoes()
    {
        // The dispatcher's first exchange: one count per peer (a (size, 1) I32 tensor, split one row each).
        const int size = 4;
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var got = new int[size][];
        RankThreads.Run(size, r =>
        {
            var counts = _cpu.Allocate(new Shape(size, 1), DType.I32);
            _cpu.CopyFromHost<int>(Enumerable.Range(0, size).Select(d => 10 * r + d).ToArray(), counts);
            var result = _cpu.Allocate(new Shape(size, 1), DType.I32);
            var ones = Enumerable.Repeat(1, size).ToArray();
            groups[r].AllToAll(counts, result, ones, ones).Wait();
            got[r] = _cpu.ToArray<int>(result);
        });
        for (int d = 0; d < size; d++) Assert.Equal(Enumerable.Range(0, size).Select(s => 10 * s + d), got[d]);
    }

    [Fact]
    public void BadArgumentsAreRefusedWithTheirNames()
    {
        var group = InProcessProcessGroup.Create(2, Timeout)[0];
        var input = _cpu.Allocate(new Shape(4, Row), DType.F32);
        var output = _cpu.Allocate(new Shape(4, Row), DType.F32);
        Assert.Contains("one per rank (2)", Assert.Throws<ArgumentException>(() => group.AllToAll(input, output, [4], [2, 2])).Message);
        Assert.Contains("sum to 3 rows", Assert.Throws<ArgumentException>(() => group.AllToAll(input, output, [1, 2], [2, 2])).Message);
        Assert.Contains("is negative", Assert.Throws<ArgumentOutOfRangeException>(() => group.AllToAll(input, output, [5, -1], [2, 2])).Message);
        Assert.Contains("sends itself 1 rows", Assert.Throws<ArgumentException>(() => group.AllToAll(input, output, [1, 3], [2, 2])).Message);
        var wide = _cpu.Allocate(new Shape(4, Row + 1), DType.F32);
        Assert.Contains("differ past dimension 0", Assert.Throws<ArgumentException>(() => group.AllToAll(input, wide, [2, 2], [2, 2])).Message);
        var f64 = _cpu.Allocate(new Shape(4, Row), DType.F64);
        Assert.Contains("input is F32 but output is F64", Assert.Throws<ArgumentException>(() => group.AllToAll(input, f64, [2, 2], [2, 2])).Message);
        Assert.Equal(0, group.CollectiveCount);   // nothing refused was issued
    }

    [Fact]
    public void SplitsThatDisagreeAcrossRanksFailAsAMismatch()
    {
        var groups = InProcessProcessGroup.Create(2, Timeout);
        var errors = new Exception?[2];
        RankThreads.Run(2, r =>
        {
            // Rank 0 sends rank 1 two rows; rank 1 expects one.
            int[] send = r == 0 ? [1, 2] : [1, 1];
            int[] receive = r == 0 ? [1, 1] : [1, 1];
            var input = _cpu.Allocate(new Shape(send.Sum(), Row), DType.F32);
            var result = _cpu.Allocate(new Shape(receive.Sum(), Row), DType.F32);
            errors[r] = Record.Exception(() => groups[r].AllToAll(input, result, send, receive).Wait());
        });
        var e = errors[0] ?? errors[1];
        Assert.NotNull(e);
        Assert.Equal("CollectiveMismatchException", e.InnerException?.GetType().Name);   // the handle's failure wraps the rendezvous's
        Assert.Contains("rank 0 sends rank 1 2 rows but rank 1 expects 1", e.Message);
    }
}
