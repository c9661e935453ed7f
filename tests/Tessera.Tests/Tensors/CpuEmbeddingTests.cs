using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuEmbeddingTests
{
    private readonly CpuBackend _cpu = new(2);

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void ForwardGathersRowsAndAccumulatesWhenAsked(DType dtype)
    {
        var rng = new Random(60);
        int v = 10, c = 19;
        int[] ids = { 3, 0, 9, 3, 5 };
        var table = TestTensors.Normal(rng, v * c); var start = TestTensors.Normal(rng, ids.Length * c);
        var tt = TestTensors.FromDoubles(_cpu, table, dtype, v, c); var tid = _cpu.FromArray(ids, ids.Length);
        var o = _cpu.Allocate(new Shape(ids.Length, c), dtype); TestTensors.Poison(_cpu, o);
        _cpu.EmbeddingForward(tid, tt, o);
        var expected = new double[ids.Length * c];
        for (int r = 0; r < ids.Length; r++) for (int j = 0; j < c; j++) expected[r * c + j] = table[ids[r] * c + j];
        NumericAssert.Close(expected.Select(e => dtype == DType.F32 ? (float)e : e).ToArray(), TestTensors.ToDoubles(_cpu, o), 0, "embedding gather");
        var acc = TestTensors.FromDoubles(_cpu, start, dtype, ids.Length, c);
        _cpu.EmbeddingForward(tid, tt, acc, accumulate: true);
        NumericAssert.Close(expected.Zip(start, (p, q) => p + q).ToArray(), TestTensors.ToDoubles(_cpu, acc), dtype == DType.F32 ? 1e-6 : 1e-15, "embedding accumulate");
    }

    [Fact]
    public void BackwardScatterAddsRepeatedIdsAndPassesTheGradientCheck()
    {
        var rng = new Random(61);
        int v = 6, c = 5;
        int[] ids = { 2, 4, 2, 0, 2 };
        var table = TestTensors.Normal(rng, v * c); var w = TestTensors.Normal(rng, ids.Length * c); var d0 = TestTensors.Normal(rng, v * c);
        var tid = _cpu.FromArray(ids, ids.Length);
        var o = _cpu.Allocate(new Shape(ids.Length, c), DType.F64);
        double Loss() { _cpu.EmbeddingForward(tid, TestTensors.FromDoubles(_cpu, table, DType.F64, v, c), o); return TestTensors.Dot(w, _cpu.ToArray<double>(o)); }
        var dTable = TestTensors.FromDoubles(_cpu, d0, DType.F64, v, c);
        _cpu.EmbeddingBackward(tid, TestTensors.FromDoubles(_cpu, w, DType.F64, ids.Length, c), dTable);
        GradientCheck.Assert(Loss, table, _cpu.ToArray<double>(dTable).Zip(d0, (p, q) => p - q).ToArray(), "embedding dtable");
    }

    [Fact]
    public void BackwardOnAThreadedSizeMatchesSerialScatter()
    {
        var rng = new Random(62);
        int v = 50, c = 256, n = 400;
        var ids = Enumerable.Range(0, n).Select(_ => rng.Next(v)).ToArray();
        var dy = TestTensors.Normal(rng, n * c);
        var dTable = _cpu.Zeros(new Shape(v, c), DType.F64);
        _cpu.EmbeddingBackward(_cpu.FromArray(ids, n), TestTensors.FromDoubles(_cpu, dy, DType.F64, n, c), dTable);
        var expected = new double[v * c];
        for (int r = 0; r < n; r++) for (int j = 0; j < c; j++) expected[ids[r] * c + j] += dy[r * c + j];
        NumericAssert.Close(expected, _cpu.ToArray<double>(dTable), 1e-14, "threaded scatter");
    }

    [Fact]
    public void IdsOutsideTheTableAreRejectedNamingThePosition()
    {
        var table = _cpu.Zeros(new Shape(4, 3), DType.F32);
        var o = _cpu.Allocate(new Shape(2, 3), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.EmbeddingForward(_cpu.FromArray(new[] { 1, 4 }, 2), table, o));
        Assert.Contains("ids[1] = 4", e.Message);
        Assert.Throws<ArgumentException>(() => _cpu.EmbeddingBackward(_cpu.FromArray(new[] { -1, 0 }, 2), o, table));
    }
}
