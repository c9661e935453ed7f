using Tessera.Distributed.Mesh;
using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn.Parallel;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference.Serving;
using Tessera.Tests.Support;
using Tessera.Training.Parallel;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Quantization;

/// <summary>
/// Models loaded with <c>--quantize int4</c> (<see cref="WeightQuantization.Int4"/>: round to nearest, asymmetric, groups of
/// 128 columns or fewer) on the CPU. The oracle is the same model in floating point with its linear weights replaced by what
/// the int4 weights stand for, scale (q - z), computed in double by the test's own loop over the packed layout: logits,
/// cached decoding and the serving engine must equal it. The embedding tables and the head stay in the model's dtype.
/// </summary>
public sealed class Int4QuantizedModelTests : IDisposable
{
    private readonly CpuBackend _cpu;
    private readonly SavedDebugModels _models;

    public Int4QuantizedModelTests()
    {
        _cpu = new CpuBackend(2);
        _models = new SavedDebugModels(_cpu, "tessera-int4-");
    }

    public void Dispose() => _models.Dispose();

    private double[] StandsFor(QuantizedWeight q) => Int4Reference.StandsFor(q, _cpu);

    /// <summary>The model of <paramref name="dir"/> in floating point with every int4 weight of <paramref name="quantized"/> set to what it stands for.</summary>
    private Model Dequantized(string dir, Model quantized, DType dtype)
    {
        var reference = PretrainedModel.Load(dir, _cpu, dtype);
        int count = 0;
        foreach (var p in quantized.Layout.Parameters)
        {
            Assert.Equal(quantized.IsInt4Quantizable(p), p.Quantized is not null);
            if (p.Quantized is not { } q) continue;
            Assert.True(q.IsInt4, p.Name);
            TestTensors.Write(_cpu, reference.Parameters[p.Name].Value, StandsFor(q));
            count++;
        }
        Assert.True(count > 0);
        return reference;
    }

    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    [InlineData("qwen3-debug")]
    [InlineData("mixtral-debug")]
    [InlineData("gemma3-debug")]
    public void EachFamilyGivesTheLogitsOfItsDequantizedWeights(string preset)
    {
        var (dir, original) = _models.Save(preset, DType.F64);
        var quantized = PretrainedModel.Load(dir, _cpu, DType.F64, quantization: WeightQuantization.Int4);
        var reference = Dequantized(dir, quantized, DType.F64);
        Assert.Null(quantized.Layout["tok_emb.weight"].Quantized);
        var tokens = _models.Tokens(original.Config, 2, 9);
        var expected = _models.Logits(reference, tokens);
        // The same weights in F64, the dequantized tiles' GEMM against the reference's own: only the sums' order differs.
        NumericAssert.Close(expected, _models.Logits(quantized, tokens), 1e-12, $"{preset}: int4 logits against the dequantized model's");
        // What 4 bits cost: each weight moves by up to (max - min) / 30 of its group (3 % of the range of O(0.3) uniform weights,
        // 16x int8's step). Through two blocks of random weights (norm scales too) that moved the logits by 19-111 % of their
        // largest in development (gemma3's four norms a block the most), so this bound (150 %) only catches a blow-up; the
        // equality above is the test, and a trained model's figure belongs in docs/benchmarks.md.
        double drift = NumericAssert.MaxRelativeError(_models.Logits(original, tokens), expected);
        TestContext.Current.TestOutputHelper?.WriteLine($"{preset}: int4 moved the logits by {drift:P3} of their largest");
        Assert.InRange(drift, 1e-6, 1.5);
    }

    [Theory]
    [InlineData(16)]
    [InlineData(-1)]
    public void SmallerGroupsAndPerChannelGiveTheirDequantizedModelsLogits(int group)
    {
        var (dir, original) = _models.Save("llama-debug", DType.F64);
        var quantized = PretrainedModel.Quantized(original.Config, _cpu, DType.F64, quantization: WeightQuantization.Int4, int4GroupSize: group);
        using (var hf = HuggingFaceModelDirectory.Open(dir, original.Config)) hf.LoadInto(quantized.Layout.Parameters, _cpu);
        var down = quantized.Layout["blocks.0.mlp.proj.weight"].Quantized!;
        Assert.Equal(group == -1 ? 64 : 16, down.GroupSize);
        Assert.Equal(group == -1 ? 1 : 4, down.Groups);
        var reference = Dequantized(dir, quantized, DType.F64);
        var tokens = _models.Tokens(original.Config, 2, 7);
        NumericAssert.Close(_models.Logits(reference, tokens), _models.Logits(quantized, tokens), 1e-12, $"group {group}");
    }

    [Theory]
    [InlineData("llama-debug", DType.F64)]
    [InlineData("llama-debug", DType.F32)]
    [InlineData("gpt2-debug", DType.F32)]
    [InlineData("mixtral-debug", DType.F64)]
    public async Task DecodingAndServingGiveTheDequantizedModelsTokens(string preset, DType dtype)
    {
        var (dir, _) = _models.Save(preset, dtype, c => c with { VocabSize = 256, MaxSequenceLength = 64 });
        var quantized = PretrainedModel.Load(dir, _cpu, dtype, quantization: WeightQuantization.Int4);
        var reference = Dequantized(dir, quantized, dtype);
        int[][] prompts = [[10, 20, 30, 40, 50], [7], [99, 98, 97, 96, 95, 94, 93, 92, 91, 90, 89, 88]];
        var options = new GenerationOptions { MaxNewTokens = 12 };
        // Greedy tokens of the same weights: equal unless two logits are within the sums' rounding of each other (F64: never at
        // O(0.3) weights; F32: not at these seeds' draws, which the log names).
        var expected = prompts.Select(p => new TextGenerator(reference).Generate(p, options).ToList()).ToList();
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(expected[i], new TextGenerator(quantized).Generate(prompts[i], options).ToList());
        using var engine = new InferenceEngine(quantized, new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 1 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 4, TokenBudget = 16, MaxQueue = 8 },
        });
        var served = await EngineRequests.RunAll(engine, prompts, 12);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], served[i]);
    }

    [Fact]
    public void RoundToNearestRecoversEachWeightWithinHalfAStepAndZeroExactly()
    {
        var rng = TestRandom.Create();
        const int rows = 5, columns = 200, group = 64;              // groups of 64, 64, 64 and 8
        var w = new float[rows * columns];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 7 == 0 ? 3 : 1);
        for (int c = 64; c < 128; c++) w[columns + c] = 0f;        // a group of zeros
        for (int c = 0; c < 64; c++) w[2 * columns + c] = 0.5f + c / 128f;   // all positive: the range is stretched to hold 0
        w[3 * columns + 5] = 0f;
        int groups = 4;
        var packed = new int[rows * columns / 8];
        var scales = new float[rows * groups];
        var zeros = new sbyte[rows * groups];
        Int4Quantization.QuantizeRows(w, rows, columns, group, packed, scales, zeros, "w");
        var back = Int4Quantization.Dequantize(packed, scales, zeros, rows, columns, group);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < columns; c++)
            {
                int g = r * groups + c / group;
                Assert.InRange(zeros[g], 0, 15);
                Assert.True(Math.Abs(back[r * columns + c] - w[r * columns + c]) <= scales[g] / 2 * (1 + 1e-6),
                    $"[{r}, {c}]: {back[r * columns + c]} against {w[r * columns + c]}, step {scales[g]}");
                if (w[r * columns + c] == 0f) Assert.Equal(0.0, back[r * columns + c]);
            }
        Assert.Equal(0f, scales[1 * groups + 1]);
        Assert.Equal(0, zeros[2 * groups + 0]);                      // lo = 0: the zero point is 0
        w[17] = float.NaN;
        var e = Assert.Throws<ArgumentException>(() => Int4Quantization.QuantizeRows(w, rows, columns, group, packed, scales, zeros, "blocks.0.w"));
        Assert.Contains("blocks.0.w", e.Message);
        Assert.Contains("[0, 17]", e.Message);
    }

    [Fact]
    public void TheWeightsTakeHalfAByteAndTheTablesAndHeadStayInTheModelsDtype()
    {
        var (dir, original) = _models.Save("llama-debug", DType.F32);
        var quantized = PretrainedModel.Load(dir, _cpu, DType.F32, quantization: WeightQuantization.Int4);
        var storage = Assert.IsType<QuantizedParameterStorage>(quantized.Layout.Storage);
        Assert.Equal(WeightQuantization.Int4, storage.Format);
        Assert.Null(quantized.Layout["lm_head.weight"].Quantized);
        Assert.Null(quantized.Layout["tok_emb.weight"].Quantized);
        var linear = quantized.Layout.Parameters.Where(quantized.IsInt4Quantizable).ToList();
        Assert.Equal(linear.Count, storage.QuantizedCount);
        // Half a byte a weight, and a 4-byte scale and a 1-byte zero a group (each row of K <= 128 is one group here).
        long expected = quantized.Layout.Parameters.Sum(p => p.Quantized is null ? 4L * p.NumElements : p.NumElements / 2 + 5L * p.Shape[0]);
        Assert.Equal(expected, quantized.WeightBytes);
        var e = Assert.Throws<InvalidOperationException>(() => quantized.Layout["blocks.0.mlp.gate.weight"].Value);
        Assert.Contains("int4", e.Message);
    }

    /// <summary>
    /// Tensor-parallel ranks each quantize the slices they hold (a row-parallel weight's groups start at its own first column).
    /// The oracle is one device's F64 model holding what the ranks' int4 weights stand for, put together in double (the test's
    /// own loop): the ranks must generate its greedy and seeded sampled tokens.
    /// </summary>
    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    [InlineData("mixtral-debug")]   // the experts' slices quantized per rank, the router whole on each
    public void TensorParallelRanksGenerateTheTokensOfTheWeightsTheyHold(string preset)
    {
        var (dir, _) = _models.Save(preset, DType.F64);
        int[] prompt = [5, 17, 3, 42, 8];
        var greedy = new Tessera.Inference.Sampling.SamplingOptions { Temperature = 0 };
        var sampled = new Tessera.Inference.Sampling.SamplingOptions { Temperature = 0.9, TopK = 20, Seed = 7 };
        List<int> Generate(Model model, Tessera.Inference.Sampling.SamplingOptions sampling) =>
            new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 16, Sampling = sampling }).ToList();
        var ranks = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var model = PretrainedModel.Load(dir, ctx.Backend, DType.F64, tensorParallelism: tensor, quantization: WeightQuantization.Int4);
            var held = new Dictionary<string, (double[] Global, bool Replicated)>();
            foreach (var p in model.Layout.Parameters)
            {
                if (p.Quantized is not { } q) continue;
                Assert.True(q.IsInt4, p.Name);
                var global = new double[p.GlobalShape.NumElements];
                p.ScatterToGlobal<double>(Int4Reference.StandsFor(q, ctx.Backend), global);
                held[p.Name] = (global, p.Placement.IsReplicated);
            }
            return (Held: held, Greedy: Generate(model, greedy), Sampled: Generate(model, sampled));
        }, TimeSpan.FromSeconds(60));

        var reference = PretrainedModel.Load(dir, _cpu, DType.F64);
        foreach (var (name, (first, replicated)) in ranks[0].Held)
        {
            // A replicated weight (mixtral's router) is whole on every rank; split ones are disjoint slices that add up to the whole.
            var whole = replicated ? first : new double[first.Length];
            if (!replicated)
                foreach (var r in ranks)
                    for (int i = 0; i < whole.Length; i++) whole[i] += r.Held[name].Global[i];
            TestTensors.Write(_cpu, reference.Parameters[name].Value, whole);
        }
        Assert.Equal(Generate(reference, greedy), ranks[0].Greedy);
        Assert.Equal(Generate(reference, sampled), ranks[0].Sampled);
        Assert.Equal(ranks[0].Greedy, ranks[1].Greedy);
        Assert.Equal(ranks[0].Sampled, ranks[1].Sampled);
    }

    [Fact]
    public void AnInt4TableCannotBeLookedUp()
    {
        var q = Int4Quantization.Quantize(_cpu, new float[16 * 32], 16, 32, 32);
        var e = Assert.Throws<NotSupportedException>(() => _cpu.QuantizedEmbeddingForward(_cpu.FromArray(new[] { 1 }, 1), q, _cpu.Zeros(new Shape(1, 32), DType.F32)));
        Assert.Contains("int4", e.Message);
    }
}
