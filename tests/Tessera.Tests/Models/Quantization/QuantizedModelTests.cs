using Tessera.Distributed.Mesh;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference.Serving;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Tessera.Training.Parallel;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Quantization;

/// <summary>
/// Models loaded with int8 weights (<see cref="WeightQuantization.Int8"/>, <see cref="QuantizedParameterStorage"/>), on the CPU.
/// The oracle is the same model in floating point with its linear weights replaced by the values the int8 weights stand for
/// (scale x value, computed in double by the test): every family's logits, the cached decoding of <see cref="TextGenerator"/>
/// and the serving engine must equal it. How far quantization moves a model from its trained weights is measured beside it.
/// </summary>
public sealed class QuantizedModelTests : IDisposable
{
    private readonly CpuBackend _cpu;
    private readonly SavedDebugModels _models;

    public QuantizedModelTests()
    {
        _cpu = new CpuBackend(2);
        _models = new SavedDebugModels(_cpu, "tessera-quantized-");
    }

    public void Dispose() => _models.Dispose();

    public static TheoryData<string> Families => DebugFamilies.Each;

    /// <summary>A model of <paramref name="preset"/> with O(0.3) random weights (seed logged) saved as a Hugging Face directory.</summary>
    private (string Directory, Model Original) Saved(string preset, DType dtype, Func<TransformerConfig, TransformerConfig>? change = null) =>
        _models.Save(preset, dtype, change);

    /// <summary>The model of <paramref name="dir"/> in floating point with every linear weight set to what <paramref name="quantized"/>'s int8 weight stands for.</summary>
    private Model Dequantized(string dir, Model quantized, DType dtype)
    {
        var reference = PretrainedModel.Load(dir, _cpu, dtype);
        int count = 0;
        foreach (var p in quantized.Layout.Parameters)
        {
            if (p.Quantized is not { } q) { Assert.False(quantized.IsQuantizable(p), $"{p.Name} is quantizable but was not quantized"); continue; }
            Assert.True(quantized.IsQuantizable(p), $"{p.Name} was quantized but is not quantizable");
            var values = _cpu.ToArray<sbyte>(q.Values);
            var scales = _cpu.ToArray<float>(q.Scales);
            var w = new double[values.Length];
            for (int i = 0; i < w.Length; i++) w[i] = (double)scales[i / q.Columns] * values[i];
            TestTensors.Write(_cpu, reference.Parameters[p.Name].Value, w);
            count++;
        }
        Assert.True(count > 0);
        return reference;
    }

    private double[] Logits(Model model, Tensor tokens) => _models.Logits(model, tokens);

    private Tensor Tokens(TransformerConfig config, int b, int t) => _models.Tokens(config, b, t);

    [Theory]
    [MemberData(nameof(Families))]
    public void EachFamilyGivesTheLogitsOfItsDequantizedWeights(string preset)
    {
        var (dir, original) = Saved(preset, DType.F64);
        var quantized = PretrainedModel.Load(dir, _cpu, DType.F64, quantization: WeightQuantization.Int8);
        var reference = Dequantized(dir, quantized, DType.F64);
        var tokens = Tokens(original.Config, 2, 9);
        var expected = Logits(reference, tokens);
        // The same weights in F64, summed in another order (the dequantized product against the reference's own): 1e-12.
        NumericAssert.Close(expected, Logits(quantized, tokens), 1e-12, $"{preset}: int8 logits against the dequantized model's");
        // What quantization costs, weight by weight: each quantized weight moves from its stored value (the directory's, as
        // loaded unquantized) by at most half a step (the symmetric int8 grid's step is max|row| / 127), which holds for every
        // seed; a wrong scale or a lost row breaks it. Slack of 3e-5 of a step for the quantizer's F32 arithmetic: it rounds
        // x (127 / max) to the nearest integer after two F32 roundings (the inverse's and the product's, each up to 2^-24 of
        // a value up to 127, so 1.5e-5 of a step), and so may round a value that far past a midpoint the other way (a CI run's
        // clock seed hit a midpoint: gpt2-debug's pos_emb moved by exactly 3.038e-3, half its step, and failed 1e-6 of slack).
        var stored = PretrainedModel.Load(dir, _cpu, DType.F64);
        foreach (var p in quantized.Layout.Parameters)
        {
            if (p.Quantized is null) continue;
            var (before, after) = (TestTensors.ToDoubles(_cpu, stored.Parameters[p.Name].Value), TestTensors.ToDoubles(_cpu, reference.Parameters[p.Name].Value));
            int columns = p.Quantized.Columns;
            for (int row = 0; row < before.Length / columns; row++)
            {
                double largest = 0;
                for (int c = 0; c < columns; c++) largest = Math.Max(largest, Math.Abs(before[row * columns + c]));
                for (int c = 0; c < columns; c++)
                {
                    double moved = Math.Abs(after[row * columns + c] - before[row * columns + c]);
                    Assert.True(moved <= largest / 127 * (0.5 + 3e-5) + 1e-300, $"{p.Name}[{row}, {c}] moved by {moved:E6}, more than half its row's step {largest / 127:E6}");
                }
            }
        }
        // Through two blocks of uniform O(0.3) random weights (norm scales too, far rougher than a trained model's) those moves
        // took the logits 1.5-53 % of their largest over the clock seeds of session 45 (a CI run failed the earlier 20 % bound
        // at 20.7 %), so the logits bound only catches a blow-up, as int4's does; the weight check above is the exact one,
        // and a trained model's figure is docs/benchmarks.md's.
        double drift = NumericAssert.MaxRelativeError(Logits(original, tokens), expected);
        TestContext.Current.TestOutputHelper?.WriteLine($"{preset}: logits moved by {drift:P3} of their largest");
        Assert.InRange(drift, 1e-6, 1.5);
    }

    [Theory]
    [InlineData("gpt2-debug", DType.F64)]
    [InlineData("llama-debug", DType.F64)]
    [InlineData("gpt2-debug", DType.F32)]    // the direct int8 kernel (a decode step's rows) and the F32 GEMM
    [InlineData("llama-debug", DType.F32)]
    [InlineData("qwen3-debug", DType.F32)]   // int8 products; the q/k head norms stay in F32
    [InlineData("mixtral-debug", DType.F64)] // int8 router and experts (ordinary Linear layers); decode-size steps routed on the device
    [InlineData("qwen2-moe-debug", DType.F64)] // and the int8 shared expert and its C x 1 gate
    [InlineData("gemma3-debug", DType.F32)]  // int8 GeGLU products through their own layers; the four norms stay in F32
    public async Task DecodingAndServingGiveTheDequantizedModelsTokens(string preset, DType dtype)
    {
        var (dir, _) = Saved(preset, dtype, c => c with { VocabSize = 256, MaxSequenceLength = 64 });
        var quantized = PretrainedModel.Load(dir, _cpu, dtype, quantization: WeightQuantization.Int8);
        var reference = Dequantized(dir, quantized, dtype);
        int[][] prompts = [[10, 20, 30, 40, 50], [7], [99, 98, 97, 96, 95, 94, 93, 92, 91, 90, 89, 88]];
        var options = new GenerationOptions { MaxNewTokens = 12 };
        // Greedy tokens of the same weights: equal unless two logits are within the sums' rounding of each other (F64: never at
        // O(0.3) weights; F32: not at this fixed seed's draws, which the log names).
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
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
    }

    /// <summary>
    /// Tensor-parallel ranks each quantize the slices they hold: a column-parallel weight's rows keep one device's scales, a
    /// row-parallel weight's rows get a scale per rank's slice. The oracle is one device's F64 model holding what the ranks'
    /// int8 weights stand for, put together in double: the ranks must generate its greedy and seeded sampled tokens.
    /// </summary>
    [Theory]
    [InlineData("gpt2-debug", 2)]
    [InlineData("llama-debug", 2)]
    [InlineData("mixtral-debug", 2)]     // the experts' slices quantized per rank (proj: a scale per rank's columns), the router whole
    [InlineData("qwen2-moe-debug", 2)]   // and the shared expert's slices, its C x 1 gate whole
    public void TensorParallelRanksGenerateTheTokensOfTheWeightsTheyHold(string preset, int tp)
    {
        var (dir, _) = Saved(preset, DType.F64);
        int[] prompt = [5, 17, 3, 42, 8];
        var greedy = new SamplingOptions { Temperature = 0 };
        var sampled = new SamplingOptions { Temperature = 0.9, TopK = 20, Seed = 7 };
        List<int> Generate(Model model, SamplingOptions sampling) =>
            new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 16, Sampling = sampling }).ToList();
        var ranks = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var model = PretrainedModel.Load(dir, ctx.Backend, DType.F64, tensorParallelism: tensor, quantization: WeightQuantization.Int8);
            // What this rank's int8 weights stand for, at their places in the whole weights (zeros elsewhere).
            var held = new Dictionary<string, (double[] Global, bool Replicated)>();
            foreach (var p in model.Layout.Parameters)
            {
                if (p.Quantized is not { } q) continue;
                var values = ctx.Backend.ToArray<sbyte>(q.Values);
                var scales = ctx.Backend.ToArray<float>(q.Scales);
                var local = new double[values.Length];
                for (int i = 0; i < local.Length; i++) local[i] = (double)scales[i / q.Columns] * values[i];
                var global = new double[p.GlobalShape.NumElements];
                p.ScatterToGlobal<double>(local, global);
                held[p.Name] = (global, p.Placement.IsReplicated);
            }
            return (Held: held, Greedy: Generate(model, greedy), Sampled: Generate(model, sampled));
        }, TimeSpan.FromSeconds(60));

        var reference = PretrainedModel.Load(dir, _cpu, DType.F64);
        foreach (var (name, (first, replicated)) in ranks[0].Held)
        {
            // A replicated table (GPT-2's positions) is whole on every rank, each with the same bytes; split ones are disjoint slices.
            var whole = replicated ? first : new double[first.Length];
            if (!replicated)
                foreach (var r in ranks)
                    for (int i = 0; i < whole.Length; i++) whole[i] += r.Held[name].Global[i];
            TestTensors.Write(_cpu, reference.Parameters[name].Value, whole);
        }
        var expectedGreedy = Generate(reference, greedy);
        var expectedSampled = Generate(reference, sampled);
        foreach (var r in ranks)
        {
            Assert.Equal(expectedGreedy, r.Greedy);
            Assert.Equal(expectedSampled, r.Sampled);
        }
    }

    [Fact]
    public void TheWeightsTakeAByteEachAndNothingReadsThemAsFloats()
    {
        var (dir, original) = Saved("llama-debug", DType.F32);
        var quantized = PretrainedModel.Load(dir, _cpu, DType.F32, quantization: WeightQuantization.Int8);
        var storage = Assert.IsType<QuantizedParameterStorage>(quantized.Layout.Storage);
        var linear = quantized.Layout.Parameters.Where(quantized.IsQuantizable).ToList();
        Assert.Equal(linear.Count, storage.QuantizedCount);
        long linearElements = linear.Sum(p => p.NumElements), others = quantized.Layout.ParameterCount - linearElements;
        Assert.Equal(linearElements + 4 * linear.Sum(p => (long)p.Shape[0]) + 4 * others, quantized.WeightBytes);
        Assert.True(quantized.WeightBytes < 0.6 * original.WeightBytes, $"{quantized.WeightBytes} bytes against {original.WeightBytes}");

        var weight = quantized.Layout["blocks.0.mlp.gate.weight"];
        var e = Assert.Throws<InvalidOperationException>(() => weight.Value);
        Assert.Contains("blocks.0.mlp.gate.weight", e.Message);
        Assert.Throws<InvalidOperationException>(() => weight.Grad);
        Assert.False(weight.RequiresGradient);
        // The authoritative value reads back as the dequantized weight in F32.
        var back = weight.ReadMasterOrValue(t => _cpu.ToArray<float>(t));
        var q = weight.Quantized!;
        Assert.Equal(Int8Quantization.Dequantize(_cpu.ToArray<sbyte>(q.Values), _cpu.ToArray<float>(q.Scales), q.Columns), back);
        // Training its weights is refused where a trainer starts: there is no arena of floats to update (adapters over it train).
        var t = Assert.Throws<InvalidOperationException>(() => Tessera.Training.SingleDevice.For(quantized, new Tessera.Training.Optim.AdamWOptions()));
        Assert.Contains("int8", t.Message);
        Assert.Contains("LoRA", t.Message);
    }

    [Fact]
    public void AWeightThatIsNotFiniteIsRefusedAtLoadNamingIt()
    {
        var (dir, original) = Saved("gpt2-debug", DType.F32);
        var p = original.Parameters["blocks.1.attn.proj.weight"];
        var w = _cpu.ToArray<float>(p.Value);
        w[7] = float.PositiveInfinity;
        _cpu.CopyFromHost<float>(w, p.Value);
        var bad = Path.Combine(_models.Folder, "bad");
        HuggingFaceExport.Write(bad, original);
        var e = Assert.Throws<ArgumentException>(() => PretrainedModel.Load(bad, _cpu, DType.F32, quantization: WeightQuantization.Int8));
        Assert.Contains("blocks.1.attn.proj.weight", e.Message);
        Assert.Contains("not finite", e.Message);
    }
}
