using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Xunit;

namespace Tessera.Tests.Nn.Adapters;

/// <summary>LoRA on the Llama layer set (llama-debug, 2 blocks), GPT-2 (gpt2-debug) and Phi-3's fused modules (phi3-debug), F64 on the CPU: gradients, merging, frozen base weights.</summary>
public sealed class LoraTests
{
    private static readonly string[] AllTargets = ["q", "k", "v", "o", "gate", "up", "down"];
    internal static readonly string[] AllGpt2Targets = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"];
    internal static readonly string[] AllPhi3Targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"];

    private static string[] AllTargetsOf(string preset) => preset switch
    {
        "gpt2-debug" => AllGpt2Targets,
        "phi3-debug" => AllPhi3Targets,
        _ => AllTargets,
    };

    /// <summary>llama-debug (or <paramref name="preset"/>) in <paramref name="dtype"/> with a frozen base and adapters of rank 4 on <paramref name="targets"/>; B filled with random values so every path carries gradient.</summary>
    internal static Transformer Model(CpuBackend cpu, DType dtype, int seed, string[] targets, double dropout = 0, double alpha = 8, string preset = "llama-debug")
    {
        var config = ModelPresets.Get(preset);
        var lora = new LoraOptions { Rank = 4, Alpha = alpha, Dropout = dropout, Seed = seed, Targets = LoraTargets.Parse(config, targets) };
        var model = new Transformer(config, cpu, dtype, ArenaStorage.Frozen, lora: lora);
        model.InitializeWeights(seed);
        var rng = new Random(seed + 1);
        foreach (var p in model.Adapters!.Layout.Parameters)
            if (p.Name.EndsWith(".lora_B", StringComparison.Ordinal)) model.Adapters.Write(p, TestTensors.Normal(rng, p.NumElements, 0.3));
        model.LossChunkRows = 0;
        return model;
    }

    private static (Tensor Tokens, Tensor Targets) Batch(CpuBackend cpu, int seed, int b, int t, int vocab)
    {
        var rng = new Random(seed);
        var tokens = Enumerable.Range(0, b * t).Select(_ => rng.Next(vocab)).ToArray();
        var targets = Enumerable.Range(0, b * t).Select(i => i % 5 == 0 ? -1 : rng.Next(vocab)).ToArray();   // some ignored
        var tk = cpu.Allocate(new Shape(b, t), DType.I32);
        var tg = cpu.Allocate(new Shape(b, t), DType.I32);
        cpu.CopyFromHost<int>(tokens, tk);
        cpu.CopyFromHost<int>(targets, tg);
        return (tk, tg);
    }

    private static double LossOf(Transformer model, Tensor tokens, Tensor targets)
    {
        var losses = model.Loss(tokens, targets, 0, lossScale: 0);
        var sum = model.Backend.Allocate(new Shape(1), DType.F64);
        model.Backend.Sum(losses, sum, 1.0 / losses.NumElements);
        model.ReleaseActivations(0);
        return model.Backend.ReadScalar(sum);
    }

    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    [InlineData("phi3-debug")]
    public void AdapterGradientsMatchCentralDifferencesInF64(string preset)
    {
        // Tolerance 1e-6 norm-wise relative: central differences at h = 1e-5 in F64 are accurate to about 1e-9 here
        // (GradientCheck's error analysis); a wrong term (scaling, a missing part, a transposed product) is off by O(1).
        // GPT-2 covers the fused QKV as one adapter and the MLP's two products on either side of its GELU; Phi-3 the fused qkv_proj
        // as one adapter and gate_up_proj's A shared by the gate and up layers (its gradient is both layers' terms summed: one
        // half alone is off by O(1)).
        const int seed = 20261215;
        var cpu = new CpuBackend(1);
        var model = Model(cpu, DType.F64, seed, AllTargetsOf(preset), preset: preset);
        var (tokens, targets) = Batch(cpu, seed, 2, 6, model.Config.VocabSize);
        var adapters = model.Adapters!;
        adapters.Arena.ZeroGrad();
        var losses = model.Loss(tokens, targets, 0, lossScale: 1.0 / 12);
        model.Backward(0);
        _ = losses;
        var rng = new Random(seed);
        foreach (var p in adapters.Layout.Parameters)
        {
            var analytic = TestTensors.ToDoubles(cpu, p.Grad);
            var values = adapters.Read(p);
            // 12 elements of each adapter (seeded), so the check stays fast; every adapter kind and block is covered.
            var picks = Enumerable.Range(0, 12).Select(_ => rng.Next(values.Length)).Distinct().ToArray();
            var numeric = picks.Select(i =>
            {
                double keep = values[i];
                values[i] = keep + GradientCheck.DefaultStep; adapters.Write(p, values); double up = LossOf(model, tokens, targets) * 12;
                values[i] = keep - GradientCheck.DefaultStep; adapters.Write(p, values); double down = LossOf(model, tokens, targets) * 12;
                values[i] = keep; adapters.Write(p, values);
                return (up - down) / (2 * GradientCheck.DefaultStep) / 12;
            }).ToArray();
            var expected = picks.Select(i => analytic[i]).ToArray();
            double error = NumericAssert.MaxRelativeError(numeric, expected);
            Assert.True(error < 1e-6, $"{p.Name}: relative error {error:E2} (seed {seed})");
            Assert.Contains(expected, g => g != 0);
        }
    }

    /// <summary>
    /// GPT-2 with a trained base and an adapter on the MLP's projection: the up product's bias gradient is then taken by the
    /// adapted projection's backward (the GELU gradient's column sums, after its low-rank terms), not by the up product's
    /// own weight-gradient product. It must match central differences like every other gradient (tolerance as above).
    /// </summary>
    [Fact]
    public void TheUpProductsBiasGradientThroughAnAdaptedProjectionMatchesCentralDifferences()
    {
        const int seed = 20261204;
        var cpu = new CpuBackend(1);
        var config = ModelPresets.Get("gpt2-debug");
        var lora = new LoraOptions { Rank = 4, Alpha = 8, Seed = seed, Targets = LoraTargets.Parse(config, ["mlp.c_proj"]) };
        var model = new Transformer(config, cpu, DType.F64, ArenaStorage.Full, lora: lora);
        model.InitializeWeights(seed);
        var rng = new Random(seed + 1);
        foreach (var p in model.Adapters!.Layout.Parameters)
            if (p.Name.EndsWith(".lora_B", StringComparison.Ordinal)) model.Adapters.Write(p, TestTensors.Normal(rng, p.NumElements, 0.3));
        model.LossChunkRows = 0;
        var mlp = Assert.IsType<Tessera.Nn.Layers.GeluMlp>(model.Blocks[0].Mlp);
        Assert.IsType<LoraLinear>(mlp.Projection);
        Assert.True(mlp.Fc.TakesBiasGradientFromNext);
        var (tokens, targets) = Batch(cpu, seed, 2, 6, config.VocabSize);
        model.Parameters.ZeroGrad();
        model.Adapters.Arena.ZeroGrad();
        model.Loss(tokens, targets, 0, lossScale: 1.0 / 12);
        model.Backward(0);
        var bias = mlp.Fc.Bias!;
        var analytic = TestTensors.ToDoubles(cpu, bias.Grad);
        var values = TestTensors.ToDoubles(cpu, bias.Value);
        var picks = Enumerable.Range(0, 8).Select(_ => rng.Next(values.Length)).Distinct().ToArray();
        var numeric = picks.Select(i =>
        {
            double keep = values[i];
            values[i] = keep + GradientCheck.DefaultStep; TestTensors.Write(cpu, bias.Value, values); double up = LossOf(model, tokens, targets);
            values[i] = keep - GradientCheck.DefaultStep; TestTensors.Write(cpu, bias.Value, values); double down = LossOf(model, tokens, targets);
            values[i] = keep; TestTensors.Write(cpu, bias.Value, values);
            return (up - down) / (2 * GradientCheck.DefaultStep);
        }).ToArray();
        var expected = picks.Select(i => analytic[i]).ToArray();
        double error = NumericAssert.MaxRelativeError(numeric, expected);
        Assert.True(error < 1e-6, $"{bias.Name}: relative error {error:E2} (seed {seed})");
        Assert.Contains(expected, g => g != 0);
    }

    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    [InlineData("phi3-debug")]
    public void MergedForwardEqualsUnmergedForwardAndUnmergeRestoresTheWeights(string preset)
    {
        // 1e-12 relative in F64: merging changes only the order of the roundings (x (W + s B A)^T against x W^T + s (x A^T) B^T).
        const int seed = 7;
        var cpu = new CpuBackend(1);
        var model = Model(cpu, DType.F64, seed, AllTargetsOf(preset), alpha: 16, preset: preset);
        var (tokens, _) = Batch(cpu, seed, 2, 8, model.Config.VocabSize);
        var before = TestTensors.ToDoubles(cpu, model.Parameters.Values);
        var unmerged = TestTensors.ToDoubles(cpu, model.Forward(tokens));
        model.ReleaseActivations(0);
        // Decoding with unmerged adapters goes through the adapted layers (not the fused weight-reading ops): same logits.
        var cache = model.CreateKvCache(2);
        var cached = TestTensors.ToDoubles(cpu, model.ForwardWithCache(tokens, cache));
        NumericAssert.Close(unmerged, cached, 1e-12, "decoding with unmerged adapters");
        model.Adapters!.Merge();
        Assert.True(model.Adapters.Merged);
        var merged = TestTensors.ToDoubles(cpu, model.Forward(tokens));
        model.ReleaseActivations(0);
        NumericAssert.Close(unmerged, merged, 1e-12, "merged against unmerged logits");
        // The merge moved the weights by O(1) relative (B is random, alpha / r = 4), so the equality above is not vacuous.
        Assert.True(NumericAssert.MaxRelativeError(before, TestTensors.ToDoubles(cpu, model.Parameters.Values)) > 1e-2);
        model.Adapters.Unmerge();
        NumericAssert.Close(before, TestTensors.ToDoubles(cpu, model.Parameters.Values), 1e-14, "weights after unmerge");
    }

    [Fact]
    public void BackwardRefusesMergedAdaptersOnTheMlpDownProjection()
    {
        // Merged, the down projection is a plain product, so the MLP's fused backward reaches it (Linear.BackwardSwiGlu): it
        // must refuse as the adapter's own backward does, not train the merged weight with the adapters left out.
        const int seed = 5;
        var cpu = new CpuBackend(1);
        var model = Model(cpu, DType.F32, seed, ["down"]);
        var (tokens, targets) = Batch(cpu, seed, 2, 6, model.Config.VocabSize);
        model.Adapters!.Merge();
        model.Loss(tokens, targets, 0, lossScale: 1.0 / 12);
        var error = Assert.Throws<InvalidOperationException>(() => model.Backward(0));
        Assert.Contains("unmerge them before training", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TrainingStepsChangeOnlyTheAdaptersAndTheBaseHasNoGradients()
    {
        const int seed = 3;
        var cpu = new CpuBackend(1);
        var model = Model(cpu, DType.F32, seed, ["q", "v", "down"], dropout: 0.1);
        Assert.True(model.Parameters.Frozen);
        Assert.Null(model.Parameters.Masters);
        Assert.Equal(model.Parameters.Values.Storage.ByteLength, model.Parameters.AllocatedBytes);   // values only
        Assert.Throws<InvalidOperationException>(() => model.Parameters.Grads);
        Assert.All(model.Layout.Parameters, p => Assert.False(p.RequiresGradient));
        var baseBefore = TestTensors.ToDoubles(cpu, model.Parameters.Values);
        var adaptersBefore = TestTensors.ToDoubles(cpu, model.Adapters!.Arena.Values);
        var examples = Enumerable.Range(0, 4).Select(i => new ChatExample(i + 1,
            Enumerable.Range(0, 10).Select(j => (i * 7 + j * 3) % 96).ToArray(), Enumerable.Range(0, 10).Select(j => j >= 5).ToArray())).ToList();
        var loader = new ChatExampleLoader(examples, 2, 8);
        var options = new TrainerOptions { Steps = 3, BatchSize = 2, SequenceLength = 8, LearningRate = 1e-2, WarmupSteps = 0, EvalEvery = 0, LogEvery = 1, CheckpointEvery = 0 };
        var trainer = new Trainer(model, new SingleDevice(model.Adapters.Arena, new AdamWOptimizer(model.Adapters.Arena, new AdamWOptions())), loader, null, options);
        for (int i = 0; i < 3; i++) Assert.True(double.IsFinite(trainer.TrainStep()));
        Assert.Equal(baseBefore, TestTensors.ToDoubles(cpu, model.Parameters.Values));   // bit for bit
        Assert.NotEqual(adaptersBefore, TestTensors.ToDoubles(cpu, model.Adapters.Arena.Values));
    }

    [Fact]
    public void ATargetThatNamesNoLayerIsRefusedNamingIt()
    {
        var cpu = new CpuBackend(1);
        var config = ModelPresets.Get("llama-debug");
        var e = Assert.Throws<ArgumentException>(() => LoraTargets.Parse(config, ["q", "qkv_proj"]));
        Assert.Contains("'qkv_proj' names no layer", e.Message);
        var lora = new LoraOptions { Rank = 2, Targets = [new LoraTarget("blocks.*.attn.nothing", null, "nothing")] };
        var f = Assert.Throws<ArgumentException>(() => new Transformer(config, cpu, DType.F32, ArenaStorage.Frozen, lora: lora));
        Assert.Contains("LoRA target 'nothing'", f.Message);
        var g = Assert.Throws<ArgumentException>(() => LoraTargets.Parse(ModelPresets.Get("gpt2-debug"), ["q"]));
        Assert.Contains("'q' names no layer of a Gpt2 model", g.Message);
        // PEFT's "c_proj" is both of GPT-2's c_proj modules, as PEFT matches it; a module given twice is refused.
        Assert.Equal(["attn.c_proj", "mlp.c_proj"], LoraTargets.Parse(ModelPresets.Get("gpt2-debug"), ["c_proj"]).Select(t => t.Name));
        Assert.Contains("given twice", Assert.Throws<ArgumentException>(() => LoraTargets.Parse(ModelPresets.Get("gpt2-debug"), ["c_proj", "mlp.c_proj"])).Message);
    }

    [Fact]
    public void PeftLayoutRoundTripsNamesShapesAndValues()
    {
        var cpu = new CpuBackend(1);
        var dir = Directory.CreateTempSubdirectory("tessera-peft-").FullName;
        try
        {
            var model = Model(cpu, DType.F32, 11, AllTargets, alpha: 16);
            var adapter = Path.Combine(dir, "adapter");
            PeftAdapter.Save(adapter, model.Adapters!, "some/base");
            var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
            Assert.Equal("LORA", (string?)json["peft_type"]);
            Assert.Equal("CAUSAL_LM", (string?)json["task_type"]);
            Assert.Equal(4, (int)json["r"]!);
            Assert.Equal(16.0, (double)json["lora_alpha"]!);
            Assert.Equal("some/base", (string?)json["base_model_name_or_path"]);
            Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], json["target_modules"]!.AsArray().Select(n => (string)n!).ToArray());
            using (var file = Tessera.Models.Safetensors.SafetensorsFile.Open(Path.Combine(adapter, "adapter_model.safetensors")))
            {
                Assert.Equal(2 * 7 * 2, file.Tensors.Count);
                Assert.Equal(new Shape(4, 32), file["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].Shape);
                Assert.Equal(new Shape(32, 4), file["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"].Shape);
                Assert.Equal(new Shape(16, 4), file["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].Shape);   // 2 kv heads x 8
                Assert.Equal(new Shape(4, 64), file["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].Shape);
                Assert.Equal(new Shape(64, 4), file["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"].Shape);
                Assert.Equal(DType.F32, file["base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"].DType);
            }
            var options = PeftAdapter.ReadOptions(adapter, model.Config);
            Assert.Equal((4, 16.0), (options.Rank, options.Alpha));
            var loaded = new Transformer(model.Config, cpu, DType.F32, ArenaStorage.Frozen, lora: options);
            PeftAdapter.Load(adapter, loaded.Adapters!);
            Assert.Equal(TestTensors.ToDoubles(cpu, model.Adapters!.Arena.Values), TestTensors.ToDoubles(cpu, loaded.Adapters!.Arena.Values));

            // A file that lacks a tensor the model needs is refused before anything is written, naming it.
            var narrower = new Transformer(model.Config, cpu, DType.F32, ArenaStorage.Frozen,
                lora: options with { Targets = LoraTargets.Parse(model.Config, ["q"]) });
            var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(adapter, narrower.Adapters!));
            Assert.Contains("do not have", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Gpt2AdaptersAreWrittenInPeftsConv1DLayout()
    {
        var cpu = new CpuBackend(1);
        var dir = Directory.CreateTempSubdirectory("tessera-peft-gpt2-").FullName;
        try
        {
            var model = Model(cpu, DType.F32, 12, AllGpt2Targets, preset: "gpt2-debug");
            var adapter = Path.Combine(dir, "adapter");
            PeftAdapter.Save(adapter, model.Adapters!, "gpt2");
            var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
            Assert.True((bool)json["fan_in_fan_out"]!);   // PEFT's setting for Conv1D layers
            Assert.Equal(["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"], json["target_modules"]!.AsArray().Select(n => (string)n!).ToArray());
            int c = model.Config.Embedding;
            using (var file = Tessera.Models.Safetensors.SafetensorsFile.Open(Path.Combine(adapter, "adapter_model.safetensors")))
            {
                Assert.Equal(model.Config.Layers * 4 * 2, file.Tensors.Count);
                Assert.Equal(new Shape(4, c), file["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].Shape);
                Assert.Equal(new Shape(3 * c, 4), file["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].Shape);   // q, k and v rows: one adapter
                Assert.Equal(new Shape(c, 4), file["base_model.model.transformer.h.1.attn.c_proj.lora_B.weight"].Shape);
                Assert.Equal(new Shape(4, c), file["base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight"].Shape);
                Assert.Equal(new Shape(4, model.Config.EffectiveHidden), file["base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight"].Shape);
            }
            var options = PeftAdapter.ReadOptions(adapter, model.Config);
            Assert.Equal(AllGpt2Targets, options.Targets.Select(t => t.Name));
            var loaded = new Transformer(model.Config, cpu, DType.F32, ArenaStorage.Frozen, lora: options);
            PeftAdapter.Load(adapter, loaded.Adapters!);
            Assert.Equal(TestTensors.ToDoubles(cpu, model.Adapters!.Arena.Values), TestTensors.ToDoubles(cpu, loaded.Adapters!.Arena.Values));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
