using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Nn.Layers;

/// <summary>
/// The fused, chunked LM head against the unfused one (the head's product, <see cref="IBackend.CrossEntropy"/> in place, the
/// head's backward), in F64 on the same inputs. Chunking splits only the sums over rows of the weight (and bias) gradient
/// into per-chunk partial sums; every other value is the same arithmetic on row slices. 1e-13 relative bounds the
/// reassociation of a 16-term F64 sum (~16 ulp) with a wide margin, and any wrong row, chunk boundary or scale is O(1).
/// </summary>
public sealed class FusedLinearCrossEntropyTests
{
    private const int N = 16, C = 6;
    private const double Tolerance = 1e-13;
    private readonly CpuBackend _cpu = new(2);

    private sealed record Head(FusedLinearCrossEntropy Loss, Linear Linear, ParameterArena Arena, ActivationStore Store, Tensor X, Tensor Targets);

    private Head Build(int columns, int vocabulary, bool bias, int seed)
    {
        var rng = new Random(seed);
        var parameters = new ParameterLayoutBuilder();
        var linear = new Linear(parameters, "lm_head", C, columns, bias);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        foreach (var p in arena.Parameters) TestTensors.Write(_cpu, p.Value, TestTensors.Normal(rng, p.NumElements));
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, N, C);
        // Every fifth row ignored (-1): those rows must get loss 0 and no gradient.
        var targets = Enumerable.Range(0, N).Select(i => i % 5 == 3 ? -1 : rng.Next(vocabulary)).ToArray();
        return new Head(new FusedLinearCrossEntropy(linear, vocabulary), linear, arena, new ActivationStore(_cpu), x, _cpu.FromArray(targets, N));
    }

    /// <summary>The unfused head: logits (N, V) whole, the loss and its gradient in place, the head's backward.</summary>
    private (double[] Losses, double[] Dx, double[] Grads) Unfused(Head h, int vocabulary, double scale)
    {
        h.Arena.ZeroGrad();
        var ctx = PassContext.Training(h.Store, 0);
        var logits = h.Linear.Forward(ctx, h.X);                       // (N, V)
        var losses = _cpu.Allocate(new Shape(N), DType.F64);
        var real = logits.Slice(1, 0, vocabulary);
        _cpu.CrossEntropy(real, h.Targets, losses, real, scale);
        int pad = h.Linear.OutFeatures - vocabulary;
        if (pad > 0) _cpu.Copy(_cpu.Zeros(new Shape(N, pad), DType.F64), logits.Slice(1, vocabulary, pad));
        var dx = h.Linear.Backward(ctx, logits);
        return (_cpu.ToArray<double>(losses), _cpu.ToArray<double>(dx), _cpu.ToArray<double>(h.Arena.Grads));
    }

    private (double[] Losses, double[] Dx, double[] Grads) Fused(Head h, double scale, int chunkRows)
    {
        h.Arena.ZeroGrad();
        var losses = _cpu.Allocate(new Shape(N), DType.F64);
        var dx = _cpu.Allocate(new Shape(N, C), DType.F64);
        TestTensors.Poison(_cpu, losses);
        TestTensors.Poison(_cpu, dx);                                  // every row must be written
        h.Loss.Forward(PassContext.Training(h.Store, 1), h.X, h.Targets, losses, scale, dx, chunkRows);
        return (_cpu.ToArray<double>(losses), _cpu.ToArray<double>(dx), _cpu.ToArray<double>(h.Arena.Grads));
    }

    [Theory]
    [InlineData(11, 11, false, 3)]      // chunks of 3, 3, 3, 3, 3, 1 rows
    [InlineData(13, 9, false, 4)]       // padded vocabulary: 4 columns with no gradient
    [InlineData(13, 9, true, 1)]        // a bias, one row per chunk
    [InlineData(13, 9, false, 5)]       // a chunk boundary inside the ignored rows' pattern
    [InlineData(13, 9, false, N)]       // one chunk
    [InlineData(11, 11, true, 1000)]    // more rows allowed than there are
    public void ChunkedHeadGivesTheUnfusedLossesInputGradientAndWeightGradients(int columns, int vocabulary, bool bias, int chunkRows)
    {
        var h = Build(columns, vocabulary, bias, seed: 7 + columns + chunkRows);
        const double scale = 1.0 / 13;
        var (losses, dx, grads) = Unfused(h, vocabulary, scale);
        var fused = Fused(h, scale, chunkRows);
        NumericAssert.Close(losses, fused.Losses, Tolerance, "losses");
        NumericAssert.Close(dx, fused.Dx, Tolerance, "dx");
        NumericAssert.Close(grads, fused.Grads, Tolerance, "weight and bias gradients");
        Assert.Contains(grads, g => Math.Abs(g) > 1e-3);               // not vacuous
        for (int i = 3; i < N; i += 5)
        {
            Assert.Equal(0.0, fused.Losses[i]);
            Assert.All(fused.Dx[(i * C)..((i + 1) * C)], v => Assert.Equal(0.0, v));
        }
        // The padding rows of the weight (ids past the vocabulary) get no gradient.
        Assert.All(fused.Grads[(vocabulary * C)..(columns * C)], v => Assert.Equal(0.0, v));
    }

    [Fact]
    public void WeightGradientAccumulatesOntoWhatIsThere()
    {
        var h = Build(11, 11, bias: false, seed: 3);
        var once = Fused(h, 0.5, 4).Grads;
        var start = TestTensors.Normal(new Random(4), once.Length);
        TestTensors.Write(_cpu, h.Arena.Grads, start);
        var losses = _cpu.Allocate(new Shape(N), DType.F64);
        h.Loss.Forward(PassContext.Training(h.Store, 1), h.X, h.Targets, losses, 0.5, _cpu.Allocate(new Shape(N, C), DType.F64), 4);
        NumericAssert.Close(once.Select((g, i) => g + start[i]).ToArray(), _cpu.ToArray<double>(h.Arena.Grads), 1e-14, "accumulated gradient");
    }

    [Fact]
    public void WithoutAnInputGradientOnlyTheLossesAreWritten()
    {
        var h = Build(13, 9, bias: true, seed: 5);
        var (expected, _, _) = Unfused(h, 9, 1.0);
        var before = TestTensors.Normal(new Random(6), h.Arena.Length);
        TestTensors.Write(_cpu, h.Arena.Grads, before);
        var losses = _cpu.Allocate(new Shape(N), DType.F64);
        h.Loss.Forward(PassContext.Training(h.Store, 1), h.X, h.Targets, losses, 1.0, dx: null, maxChunkRows: 5);
        NumericAssert.Close(expected, _cpu.ToArray<double>(losses), Tolerance, "losses");
        Assert.Equal(before, _cpu.ToArray<double>(h.Arena.Grads));    // bit for bit: untouched
    }

    [Theory]
    [InlineData(16, 16, 16)]            // fits: one chunk of every row
    [InlineData(16, 3, 3)]              // exact limit when it is below 8
    [InlineData(65536, 5336, 5048)]     // GPT-2 64 x 1024 at its default: 13 chunks of 5048 (a multiple of 8) and 4960
    [InlineData(16384, 2092, 2048)]     // Llama 3 8 x 2048 at its default: 8 chunks of 2048
    [InlineData(100, 99, 56)]           // two chunks, balanced, not 99 + 1
    public void ChunksAreBalancedAndAlignedWithinTheLimit(int rows, int maxRows, int expected)
    {
        int chunk = FusedLinearCrossEntropy.ChunkRows(rows, maxRows);
        Assert.Equal(expected, chunk);
        Assert.InRange(chunk, 1, maxRows);
        int chunks = (rows + chunk - 1) / chunk;
        Assert.Equal((rows + maxRows - 1) / maxRows, chunks);          // no more chunks than the limit forces
    }

    [Theory]
    [InlineData(50304, 5336)]           // GPT-2's padded vocabulary: 268.4M logits per chunk at most
    [InlineData(128256, 2092)]          // Llama 3's
    [InlineData(64128, 4185)]           // Llama 3's over tp = 2
    public void DefaultChunkHoldsAtMost2To28Logits(int columns, int expected)
    {
        int rows = FusedLinearCrossEntropy.DefaultChunkRows(columns);
        Assert.Equal(expected, rows);
        Assert.True((long)rows * columns <= 1L << 28);
        Assert.True((long)(rows + 1) * columns > 1L << 28);
    }

    [Fact]
    public void BadShapesAndChunkSizesAreRefusedNamingTheNumbers()
    {
        var h = Build(11, 11, bias: false, seed: 9);
        var ctx = PassContext.Training(h.Store, 1);
        var losses = _cpu.Allocate(new Shape(N), DType.F64);
        var e1 = Assert.Throws<ArgumentException>(() => h.Loss.Forward(ctx, _cpu.Allocate(new Shape(N, C + 1), DType.F64), h.Targets, losses, 1, null, 4));
        Assert.Contains($"must be contiguous (N, {C})", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => h.Loss.Forward(ctx, h.X, h.Targets, _cpu.Allocate(new Shape(N - 1), DType.F64), 1, null, 4));
        Assert.Contains($"must be ({N})", e2.Message);
        var e3 = Assert.Throws<ArgumentException>(() => h.Loss.Forward(ctx, h.X, h.Targets, losses, 1, _cpu.Allocate(new Shape(N, C - 1), DType.F64), 4));
        Assert.Contains("input gradient", e3.Message);
        var e4 = Assert.Throws<ArgumentOutOfRangeException>(() => h.Loss.Forward(ctx, h.X, h.Targets, losses, 1, null, 0));
        Assert.Contains("chunks of 0 rows", e4.Message);
        var e5 = Assert.Throws<ArgumentOutOfRangeException>(() => new FusedLinearCrossEntropy(h.Linear, 12));
        Assert.Contains("vocabulary (12) must lie in [1, 11]", e5.Message);
    }
}
