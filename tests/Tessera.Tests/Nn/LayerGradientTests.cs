using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Nn;

/// <summary>Each layer's backward against central finite differences of its forward, in F64 (tolerance: <see cref="LayerCheck.Tolerance"/>).</summary>
public class LayerGradientTests
{
    private const int B = 2, T = 8, N = B * T;
    private readonly CpuBackend _cpu = new(1);

    private (ParameterLayoutBuilder Parameters, ActivationStore Store) Setup() => (new ParameterLayoutBuilder(), new ActivationStore(_cpu));

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void LinearBackwardMatchesFiniteDifferences(bool bias)
    {
        var rng = new Random(1);
        var (parameters, store) = Setup();
        var layer = new Linear(parameters, "fc", 12, 7, bias);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, N, 12);
        var check = new LayerCheck(_cpu, () => layer.Forward(PassContext.Transient(store), x));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, layer.Forward(ctx, x));
        var dx = layer.Backward(ctx, dy);
        check.Assert(x, dx, "dx");
        check.AssertParameters(arena);
    }

    [Fact]
    public void LinearBackwardAccumulatesIntoDxWhenAsked()
    {
        var rng = new Random(2);
        var (parameters, store) = Setup();
        var layer = new Linear(parameters, "fc", 5, 3, bias: false);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, 4, 5);
        var ctx = PassContext.Training(store, 0);
        layer.Forward(ctx, x);
        var dy = TestTensors.RandomNormal(_cpu, rng, DType.F64, 4, 3);
        var start = TestTensors.Normal(rng, 20);
        var dx = TestTensors.FromDoubles(_cpu, start, DType.F64, 4, 5);
        layer.Backward(ctx, dy, dx, accumulateDx: true);
        var fresh = _cpu.Allocate(new Shape(4, 5), DType.F64);
        layer.Backward(ctx, dy, fresh);
        var expected = TestTensors.ToDoubles(_cpu, fresh).Select((v, i) => v + start[i]).ToArray();
        // One product and one add per element: equal to within a few ulps.
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, dx), 1e-14, "accumulated dx");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void LayerNormBackwardMatchesFiniteDifferences(bool bias)
    {
        var rng = new Random(3);
        var (parameters, store) = Setup();
        var layer = new LayerNorm(parameters, "ln", 16, 1e-5, bias);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        CheckNorm(layer, arena, store, rng);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]      // Gemma: the weight applied as 1 + w
    public void RmsNormBackwardMatchesFiniteDifferences(bool unitOffset)
    {
        var rng = new Random(4);
        var (parameters, store) = Setup();
        var layer = new RmsNorm(parameters, "rms", 16, 1e-5, unitOffset: unitOffset);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        CheckNorm(layer, arena, store, rng);
    }

    private void CheckNorm(INormalization layer, ParameterArena arena, ActivationStore store, Random rng)
    {
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, N, 16);
        var check = new LayerCheck(_cpu, () => layer.Forward(PassContext.Transient(store), x));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, layer.Forward(ctx, x));
        var dx = _cpu.Zeros(x.Shape, DType.F64);
        layer.Backward(ctx, dy, dx);
        check.Assert(x, dx, "dx");
        check.AssertParameters(arena);
    }

    [Fact]
    public void EmbeddingBackwardMatchesFiniteDifferencesWithRepeatedIds()
    {
        var rng = new Random(5);
        var (parameters, store) = Setup();
        var layer = new Embedding(parameters, "tok_emb", 10, 6);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        int[] idValues = [3, 1, 3, 0, 9, 3, 1, 7];               // repeats must add up; rows 2, 4-6, 8 get none
        var ids = _cpu.FromArray(idValues, idValues.Length);
        var check = new LayerCheck(_cpu, () => layer.Forward(PassContext.Transient(store), ids));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, layer.Forward(ctx, ids));
        layer.Backward(ctx, dy);
        check.AssertParameters(arena);
        var grad = TestTensors.ToDoubles(_cpu, layer.Weight.Grad);
        Assert.All(Enumerable.Range(2 * 6, 6), i => Assert.Equal(0.0, grad[i]));
    }

    /// <summary>Learned positions in training: ids i % T over B sequences. The periodic backward (one column sum over the B
    /// blocks) follows the finite differences like the scatter, leaves the rows past T untouched, and refuses a row count
    /// that is not whole periods.</summary>
    [Fact]
    public void EmbeddingPeriodicBackwardMatchesFiniteDifferences()
    {
        var rng = new Random(7);
        var (parameters, store) = Setup();
        var layer = new Embedding(parameters, "pos_emb", T + 3, 6);   // rows T .. T + 2 are never looked up
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        var idValues = Enumerable.Range(0, N).Select(i => i % T).ToArray();
        var ids = _cpu.FromArray(idValues, idValues.Length);
        var check = new LayerCheck(_cpu, () => layer.Forward(PassContext.Transient(store), ids));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, layer.Forward(ctx, ids));
        layer.BackwardPeriodic(ctx, dy, T);
        check.AssertParameters(arena);
        var grad = TestTensors.ToDoubles(_cpu, layer.Weight.Grad);
        Assert.All(Enumerable.Range(T * 6, 3 * 6), i => Assert.Equal(0.0, grad[i]));
        var e = Assert.Throws<ArgumentException>(() => layer.BackwardPeriodic(ctx, dy, 5));   // 16 rows are not whole periods of 5
        Assert.Contains("multiple of 5", e.Message);
    }

    [Theory]
    [InlineData(false, 20, false)]
    [InlineData(true, 20, false)]      // 8 x 20 weights are padded to 192 elements in the arena: gate and up as two products
    [InlineData(true, 24, false)]      // 8 x 24 = 192: gate and up adjacent, one product
    [InlineData(true, 24, true)]       // GeGLU (Gemma): the tanh GELU on the gate, always two products
    public void GeluAndSwiGluMlpBackwardMatchFiniteDifferences(bool swiglu, int hidden, bool geluGate)
    {
        var rng = new Random(6);
        var (parameters, store) = Setup();
        IFeedForward mlp = swiglu ? new SwiGluMlp(new LayerFactory(parameters), "mlp", 8, hidden, bias: false, geluGate) : new GeluMlp(new LayerFactory(parameters), "mlp", 8, hidden, bias: true);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        if (mlp is SwiGluMlp s) Assert.Equal(hidden == 24 && !geluGate, s.FusesGateAndUp);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, N, 8);
        var check = new LayerCheck(_cpu, () => mlp.Forward(PassContext.Transient(store), x));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, mlp.Forward(ctx, x));
        var dx = _cpu.Allocate(x.Shape, DType.F64);
        TestTensors.Poison(_cpu, dx);                             // "=" semantics: every element must be written
        mlp.Backward(ctx, dy, dx);
        check.Assert(x, dx, "dx");
        check.AssertParameters(arena);
    }

    [Theory]
    [InlineData(4, 4, null, true)]        // GPT-2: multi-head, biases, no RoPE
    [InlineData(4, 2, 10000.0, false)]    // Llama: grouped-query (2 query heads per kv head), RoPE
    [InlineData(4, 1, 500000.0, false)]   // multi-query
    public void AttentionBackwardMatchesFiniteDifferences(int heads, int kvHeads, double? theta, bool bias)
    {
        var rng = new Random(7);
        var (parameters, store) = Setup();
        var attn = new CausalSelfAttention(new LayerFactory(parameters), "attn", 16, heads, kvHeads, bias, theta);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, B, T, 16);
        var check = new LayerCheck(_cpu, () => attn.Forward(PassContext.Transient(store), x));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, attn.Forward(ctx, x));
        var dx = _cpu.Allocate(x.Shape, DType.F64);
        TestTensors.Poison(_cpu, dx);
        attn.Backward(ctx, dy, dx);
        check.Assert(x, dx, "dx");
        check.AssertParameters(arena);
    }

    [Fact]
    public void AttentionWithQkvBiasesScaledRopeAndASlidingWindowBackwardMatchesFiniteDifferences()
    {
        // Qwen2's q/k/v biases (no output bias), YaRN-style frequencies with an attention factor, Mistral's window of 2.
        var rng = new Random(8);
        var (parameters, store) = Setup();
        var rope = new RopeFrequencies(1e6) { InverseFrequencies = [1.0, 0.05], AttentionFactor = 1.2 };
        var attn = new CausalSelfAttention(new LayerFactory(parameters), "attn", 16, 4, 2, bias: false, rope, qkvBias: true, slidingWindow: 2);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        Assert.NotNull(attn.Qkv.Bias);
        Assert.Null(attn.Projection.Bias);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, B, T, 16);
        var check = new LayerCheck(_cpu, () => attn.Forward(PassContext.Transient(store), x));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, attn.Forward(ctx, x));
        var dx = _cpu.Allocate(x.Shape, DType.F64);
        TestTensors.Poison(_cpu, dx);
        attn.Backward(ctx, dy, dx);
        check.Assert(x, dx, "dx");
        check.AssertParameters(arena);
    }

    [Fact]
    public void GemmaAttentionWithAScaleASoftCapAndOnePlusWHeadNormsBackwardMatchesFiniteDifferences()
    {
        // Gemma: 1/sqrt(query_pre_attn_scalar) in place of 1/sqrt(D), scores capped at 1.5 (Gemma 2), q/k head norms applied
        // as 1 + w (Gemma 3), a window of 2.
        var rng = new Random(9);
        var (parameters, store) = Setup();
        var attn = new CausalSelfAttention(new LayerFactory(parameters), "attn", 16, 4, 2, bias: false, 10000.0, slidingWindow: 2,
            headSize: 8, headNormEpsilon: 1e-6, scale: 0.3, softCap: 1.5, headNormUnitOffset: true);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        Assert.True(attn.QueryNorm is { UnitOffset: true } && attn.KeyNorm is { UnitOffset: true });
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, B, T, 16);
        var check = new LayerCheck(_cpu, () => attn.Forward(PassContext.Transient(store), x));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, attn.Forward(ctx, x));
        var dx = _cpu.Allocate(x.Shape, DType.F64);
        TestTensors.Poison(_cpu, dx);
        attn.Backward(ctx, dy, dx);
        check.Assert(x, dx, "dx");
        check.AssertParameters(arena);
    }
}
