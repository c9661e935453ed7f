using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Adapters;

/// <summary>
/// LoRA on a mixture of experts' experts (mixtral-debug: 4 experts, top 2; qwen2-moe-debug: 4 experts and a shared expert), F64
/// or F32 on the CPU: targets named as PEFT names them, gradients, training with a frozen base, merging, PEFT files, the merge
/// at load against <c>tessera export</c>, multi-LoRA serving of expert adapters unmerged, and the tp/ep refusals. Seeds are written to the test output.
/// </summary>
public sealed class MixtureOfExpertsLoraTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-moe-lora-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Every target of a mixture of experts: attention, every expert's gate/up/down (and the shared expert's), the router.</summary>
    private static readonly string[] AllTargets = ["q", "k", "v", "o", "gate", "up", "down", "router"];

    /// <summary><paramref name="preset"/> with O(0.3) random base weights (frozen) and adapters of rank 4, B of O(0.3), on <paramref name="targets"/>.</summary>
    private static Model Adapted(CpuBackend cpu, DType dtype, string preset, string[] targets, int seed, ArenaStorage storage = ArenaStorage.Frozen)
    {
        TestContext.Current.TestOutputHelper?.WriteLine($"{preset}: seed {seed}");
        var config = ModelPresets.Get(preset);
        var lora = new LoraOptions { Rank = 4, Alpha = 8, Seed = seed, Targets = LoraTargets.Parse(config, targets) };
        var model = new Model(config, cpu, dtype, storage, lora: lora);
        LayerCheck.Randomize(cpu, model.Parameters, new Random(seed));
        var rng = new Random(seed + 1);
        foreach (var p in model.Adapters!.Layout.Parameters)
            if (p.Name.EndsWith(".lora_B", StringComparison.Ordinal)) model.Adapters.Write(p, TestTensors.Normal(rng, p.NumElements, 0.3));
        model.LossChunkRows = 0;
        return model;
    }

    private static (Tensor Tokens, Tensor Targets) Batch(CpuBackend cpu, int seed, int vocab)
    {
        var rng = new Random(seed);
        var tokens = Enumerable.Range(0, 2 * 6).Select(_ => rng.Next(vocab)).ToArray();
        var targets = Enumerable.Range(0, 2 * 6).Select(i => i % 5 == 0 ? -1 : rng.Next(vocab)).ToArray();
        return (cpu.FromArray(tokens, 2, 6), cpu.FromArray(targets, 2, 6));
    }

    private static double LossSum(Model model, Tensor tokens, Tensor targets)
    {
        var losses = TestTensors.ToDoubles(model.Backend, model.Loss(tokens, targets, 0, lossScale: 0));
        model.ReleaseActivations(0);
        return losses.Sum();
    }

    [Fact]
    public void TargetsAreNamedAsPeftNamesThem()
    {
        var mixtral = ModelPresets.Get("mixtral-debug");
        // Tessera's gate, up, down are the experts' w1, w3, w2 on Mixtral; router is block_sparse_moe.gate.
        Assert.Equal(["q", "w1", "w3", "w2", "block_sparse_moe.gate"], LoraTargets.Parse(mixtral, ["q", "gate", "up", "down", "router"]).Select(t => t.Name));
        Assert.Equal(["w1", "w2", "w3"], LoraTargets.Parse(mixtral, ["w1", "w2", "w3"]).Select(t => t.Name));
        // In PEFT's target_modules "gate" is the router (block_sparse_moe.gate ends in ".gate"), as PEFT matches it.
        var peftGate = Assert.Single(LoraTargets.Parse(mixtral, ["gate"], peftModules: true));
        Assert.Equal("blocks.*.mlp.router", peftGate.LayerPattern);
        Assert.Equal("blocks.*.mlp.experts.*.gate", Assert.Single(LoraTargets.Parse(mixtral, ["gate"])).LayerPattern);
        Assert.Equal(["q_proj", "w1", "w2", "w3", "gate"], LoraTargets.Parse(mixtral, ["q", "w1", "w2", "w3", "router"]).Select(LoraTargets.ModuleOf));
        // Qwen2-MoE: gate_proj is every expert's and the shared expert's, as in PEFT; so is Tessera's gate.
        var qwen2 = ModelPresets.Get("qwen2-moe-debug");
        Assert.Equal(["gate", "shared_expert.gate"], LoraTargets.Parse(qwen2, ["gate_proj"]).Select(t => t.Name));
        Assert.Equal(["gate", "shared_expert.gate"], LoraTargets.Parse(qwen2, ["gate"]).Select(t => t.Name));
        Assert.Equal(["gate_proj", "gate_proj", "gate"], LoraTargets.Parse(qwen2, ["gate", "router"]).Select(LoraTargets.ModuleOf));
        Assert.Equal("blocks.*.mlp.router", Assert.Single(LoraTargets.Parse(qwen2, ["gate"], peftModules: true)).LayerPattern);
        // A resumed run's names (each target's name, as a checkpoint keeps them) parse to the same targets.
        var all = LoraTargets.Parse(qwen2, AllTargets);
        Assert.Equal(all, LoraTargets.Parse(qwen2, all.Select(t => t.Name)));
        Assert.Equal(LoraTargets.Parse(mixtral, AllTargets), LoraTargets.Parse(mixtral, LoraTargets.Parse(mixtral, AllTargets).Select(t => t.Name)));
        // Qwen3-MoE has no shared expert: its gate is the experts'.
        Assert.Equal(["gate"], LoraTargets.Parse(ModelPresets.Get("qwen3-moe-debug"), ["gate_proj"]).Select(t => t.Name));
        // The shared expert's gate (C to 1) is no target; a module given twice is refused.
        Assert.Contains("'shared_expert_gate' names no layer", Assert.Throws<ArgumentException>(() => LoraTargets.Parse(qwen2, ["shared_expert_gate"])).Message);
        Assert.Contains("given twice", Assert.Throws<ArgumentException>(() => LoraTargets.Parse(mixtral, ["w1", "w1"])).Message);
    }

    [Theory]
    [InlineData("mixtral-debug", 20261205)]
    [InlineData("qwen2-moe-debug", 20261206)]
    public void ExpertAdapterGradientsMatchCentralDifferencesInF64(string preset, int seed)
    {
        // Tolerance 1e-6 norm-wise relative, as LoraTests': central differences at h = 1e-5 in F64 are accurate to about 1e-9;
        // a wrong term is off by O(1). A step of 1e-5 leaves every token's top-k experts as they are (the routing is piecewise
        // constant; a flip would show as an O(1) error and fail, not pass). The router's adapter moves the routing weights.
        var cpu = new CpuBackend(1);
        var model = Adapted(cpu, DType.F64, preset, AllTargets, seed);
        var (tokens, targets) = Batch(cpu, seed, model.Config.VocabSize);
        var adapters = model.Adapters!;
        adapters.Arena.ZeroGrad();
        model.Loss(tokens, targets, 0, lossScale: 1.0);
        model.Backward(0);
        var rng = new Random(seed);
        int expertAdapters = 0;
        foreach (var p in adapters.Layout.Parameters)
        {
            var analytic = TestTensors.ToDoubles(cpu, p.Grad);
            var values = adapters.Read(p);
            var picks = Enumerable.Range(0, 4).Select(_ => rng.Next(values.Length)).Distinct().ToArray();
            var numeric = picks.Select(i =>
            {
                double keep = values[i];
                values[i] = keep + GradientCheck.DefaultStep; adapters.Write(p, values); double up = LossSum(model, tokens, targets);
                values[i] = keep - GradientCheck.DefaultStep; adapters.Write(p, values); double down = LossSum(model, tokens, targets);
                values[i] = keep; adapters.Write(p, values);
                return (up - down) / (2 * GradientCheck.DefaultStep);
            }).ToArray();
            var expected = picks.Select(i => analytic[i]).ToArray();
            double error = NumericAssert.MaxRelativeError(numeric, expected);
            Assert.True(error < 1e-6, $"{p.Name}: relative error {error:E2} (seed {seed})");
            Assert.True(expected.Any(g => g != 0), $"{p.Name}: no gradient (seed {seed})");   // every expert got tokens: not vacuous
            if (p.Name.Contains(".experts.", StringComparison.Ordinal) || p.Name.Contains(".shared_expert.", StringComparison.Ordinal)) expertAdapters++;
        }
        // Every expert of every block has gate, up and proj adapters (A and B), and the shared expert too.
        int perBlock = 4 * 3 * 2 + (model.Config.HasSharedExpert ? 3 * 2 : 0);
        Assert.Equal(perBlock * model.Config.Layers, expertAdapters);
    }

    [Theory]
    [InlineData("mixtral-debug", 31)]
    [InlineData("qwen2-moe-debug", 32)]
    public void TrainingTheExpertAdaptersLowersTheLossAndLeavesTheBaseBitForBit(string preset, int seed)
    {
        var cpu = new CpuBackend(1);
        var model = Adapted(cpu, DType.F64, preset, ["gate", "up", "down"], seed);
        // The adapted experts run gate and up as their own products (the fused [Wg; Wu] product reads plain weights only).
        var moe = Assert.IsType<SparseMoeFeedForward>(model.Blocks[0].Mlp);
        Assert.All(moe.Experts, e => { Assert.IsType<LoraLinear>(e.Gate); Assert.False(e.FusesGateAndUp); });
        Assert.Equal(model.Config.HasSharedExpert, moe.SharedExpert?.Gate is LoraLinear);
        Assert.IsNotType<LoraLinear>(moe.Router);
        Assert.All(model.Layout.Parameters, p => Assert.False(p.RequiresGradient));
        var baseBefore = TestTensors.ToDoubles(cpu, model.Parameters.Values);
        var adaptersBefore = TestTensors.ToDoubles(cpu, model.Adapters!.Arena.Values);
        // A learnable cycle: each sequence counts up from its start.
        var examples = Enumerable.Range(0, 4).Select(i => new ChatExample(i + 1,
            Enumerable.Range(0, 10).Select(j => (i * 7 + j) % 96).ToArray(), Enumerable.Range(0, 10).Select(j => j >= 1).ToArray())).ToList();
        var loader = new ChatExampleLoader(examples, 2, 8);
        var options = new TrainerOptions { Steps = 25, BatchSize = 2, SequenceLength = 8, LearningRate = 1e-2, WarmupSteps = 0, EvalEvery = 0, LogEvery = 1, CheckpointEvery = 0 };
        var trainer = new Trainer(model, new SingleDevice(model.Adapters.Arena, new AdamWOptimizer(model.Adapters.Arena, new AdamWOptions())), loader, null, options);
        var losses = Enumerable.Range(0, 25).Select(_ => trainer.TrainStep()).ToArray();
        TestContext.Current.TestOutputHelper?.WriteLine($"losses {string.Join(", ", losses.Select(l => l.ToString("F4")))}");
        Assert.True(losses[^1] < 0.8 * losses[0], $"{preset}: loss went from {losses[0]} to {losses[^1]} (seed {seed})");
        Assert.Equal(baseBefore, TestTensors.ToDoubles(cpu, model.Parameters.Values));   // bit for bit
        var after = TestTensors.ToDoubles(cpu, model.Adapters.Arena.Values);
        // Every expert adapter's A moved: each expert saw tokens (4 experts, top 2, 16 tokens a step).
        foreach (var p in model.Adapters.Layout.Parameters)
            Assert.False(model.Adapters.Read(p).AsSpan().SequenceEqual(adaptersBefore.AsSpan((int)p.Offset, (int)p.NumElements)), $"{p.Name} did not change");
        Assert.NotEqual(adaptersBefore, after);
    }

    [Theory]
    [InlineData("mixtral-debug", 41)]
    [InlineData("qwen2-moe-debug", 42)]
    public void TheMergedModelGivesTheAdaptedLogits(string preset, int seed)
    {
        // 1e-12 relative in F64: merging changes only the order of the roundings; the routing sees the same logits up to that
        // (a top-k flip would be an O(1) difference and fail). Decoding with a cache through the unmerged adapters too.
        var cpu = new CpuBackend(1);
        var model = Adapted(cpu, DType.F64, preset, AllTargets, seed);
        var (tokens, _) = Batch(cpu, seed, model.Config.VocabSize);
        var before = TestTensors.ToDoubles(cpu, model.Parameters.Values);
        var unmerged = TestTensors.ToDoubles(cpu, model.Forward(tokens));
        model.ReleaseActivations(0);
        var cached = TestTensors.ToDoubles(cpu, model.ForwardWithCache(tokens, model.CreateKvCache(2)));
        NumericAssert.Close(unmerged, cached, 1e-12, "decoding with unmerged expert adapters");
        model.Adapters!.Merge();
        var merged = TestTensors.ToDoubles(cpu, model.Forward(tokens));
        model.ReleaseActivations(0);
        NumericAssert.Close(unmerged, merged, 1e-12, "merged against unmerged logits");
        var expertWeight = model.Layout["blocks.1.mlp.experts.3.proj.weight"];
        Assert.True(NumericAssert.MaxRelativeError(before.AsSpan((int)expertWeight.Offset, (int)expertWeight.NumElements).ToArray(),
            TestTensors.ToDoubles(cpu, expertWeight.Value)) > 1e-2, "the merge did not move expert 3's projection");
        model.Adapters.Unmerge();
        NumericAssert.Close(before, TestTensors.ToDoubles(cpu, model.Parameters.Values), 1e-14, "weights after unmerge");
    }

    [Theory]
    [InlineData("mixtral-debug", new[] { "q", "k", "v", "o", "w1", "w2", "w3" }, "block_sparse_moe.experts.3.w1", "w1")]
    [InlineData("qwen2-moe-debug", new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" }, "mlp.shared_expert.down_proj", "gate_proj")]
    public void PeftFilesRoundTripBitForBitUnderHuggingFacesNames(string preset, string[] targets, string module, string targetModule)
    {
        var cpu = new CpuBackend(1);
        var model = Adapted(cpu, DType.F32, preset, targets, 51);
        var adapter = Path.Combine(_dir, "adapter");
        PeftAdapter.Save(adapter, model.Adapters!, "some/base");
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
        var modules = json["target_modules"]!.AsArray().Select(n => (string)n!).ToArray();
        Assert.Contains(targetModule, modules);
        Assert.DoesNotContain(modules, m => m.Contains('*', StringComparison.Ordinal));
        var config = model.Config;
        using (var file = SafetensorsFile.Open(Path.Combine(adapter, "adapter_model.safetensors")))
        {
            int perBlock = 4 + 3 * config.Experts + (config.HasSharedExpert ? 3 : 0);
            Assert.Equal(2 * perBlock * config.Layers, file.Tensors.Count);
            Assert.Equal(new Shape(4, config.Embedding), file[$"base_model.model.model.layers.1.{module}.lora_A.weight".Replace(".down_proj.lora_A", ".gate_proj.lora_A", StringComparison.Ordinal)].Shape);
            Assert.True(file.Contains($"base_model.model.model.layers.0.{module}.lora_B.weight"));
            string expertPrefix = preset == "mixtral-debug" ? "block_sparse_moe.experts" : "mlp.experts";
            var (gateName, downName) = preset == "mixtral-debug" ? ("w1", "w2") : ("gate_proj", "down_proj");
            Assert.Equal(new Shape(config.EffectiveExpertHidden, 4), file[$"base_model.model.model.layers.1.{expertPrefix}.2.{gateName}.lora_B.weight"].Shape);
            Assert.Equal(new Shape(4, config.EffectiveExpertHidden), file[$"base_model.model.model.layers.0.{expertPrefix}.0.{downName}.lora_A.weight"].Shape);
            if (config.HasSharedExpert)
                Assert.Equal(new Shape(config.SharedExpertHidden, 4), file["base_model.model.model.layers.0.mlp.shared_expert.up_proj.lora_B.weight"].Shape);
        }
        var options = PeftAdapter.ReadOptions(adapter, config);
        Assert.Equal(model.Adapters!.Options.Targets, options.Targets);
        var loaded = new Model(config, cpu, DType.F32, ArenaStorage.Frozen, lora: options);
        PeftAdapter.Load(adapter, loaded.Adapters!);
        Assert.Equal(model.Adapters.Layout.Parameters.Select(p => p.Name), loaded.Adapters!.Layout.Parameters.Select(p => p.Name));
        Assert.Equal(TestTensors.ToDoubles(cpu, model.Adapters.Arena.Values), TestTensors.ToDoubles(cpu, loaded.Adapters.Arena.Values));   // bit for bit
    }

    [Theory]
    [InlineData("mixtral-debug", 61)]
    [InlineData("qwen2-moe-debug", 62)]
    public void ALoadWithTheExpertAdapterEqualsTheExportedMergeBitForBit(string preset, int seed)
    {
        var cpu = new CpuBackend(2);
        var c = AdapterCase.Write(_dir, preset, AllTargets, seed);
        string merged = c.Export(Path.Combine(_dir, "merged"));
        var adapted = PretrainedModel.Load(c.Base, cpu, DType.F32, adapter: c.Adapter);
        var exported = PretrainedModel.Load(merged, cpu, DType.F32);
        var plain = PretrainedModel.Load(c.Base, cpu, DType.F32);
        int changed = 0;
        foreach (var p in adapted.Layout.Parameters)
        {
            var got = cpu.ToArray<float>(p.Value);
            Assert.True(got.AsSpan().SequenceEqual(cpu.ToArray<float>(exported.Layout[p.Name].Value)), $"{preset}: '{p.Name}' differs from the exported merge (seed {seed})");
            if (!got.AsSpan().SequenceEqual(cpu.ToArray<float>(plain.Layout[p.Name].Value))) changed++;
        }
        // Per block: qkv, o, the router, every expert's gate, up, proj (and the shared expert's).
        int perBlock = 3 + 3 * c.Config.Experts + (c.Config.HasSharedExpert ? 3 : 0);
        Assert.Equal(perBlock * c.Config.Layers, changed);
        var tokens = Enumerable.Range(0, 24).Select(i => (i * 37 + seed) % 256).ToArray();
        var logits = AdapterCase.Logits(adapted, tokens);
        Assert.Equal(AdapterCase.Logits(exported, tokens), logits);

        // The merged model gives the unmerged adapted model's logits (F32: 1e-4 relative, the roundings of two orders of F32
        // products over C = 32 and F' <= 48, with the routing weights computed from logits that differ by as much).
        var lora = PeftAdapter.ReadOptions(c.Adapter, c.Config);
        var unmerged = new Model(c.Config, cpu, DType.F32, ArenaStorage.Frozen, lora: lora);
        using (var hf = Tessera.Models.HuggingFace.HuggingFaceModelDirectory.Open(c.Base)) hf.LoadInto(unmerged.Parameters.Parameters, cpu);
        PeftAdapter.Load(c.Adapter, unmerged.Adapters!);
        NumericAssert.Close(logits, AdapterCase.Logits(unmerged, tokens), 1e-4, "unmerged adapters against the exported merge");
        Assert.True(NumericAssert.MaxRelativeError(logits, AdapterCase.Logits(plain, tokens)) > 5e-2, "the adapter hardly moves the logits");
    }

    /// <summary>
    /// Adapters on the experts served unmerged (multi-LoRA, F64): adapter a on q, every expert's gate and down (the shared expert's
    /// too on Qwen2-MoE) and the router, adapter b on the experts' up and down. Each expert runs the gathered rows of its tokens, and
    /// the batch's rows follow that gather (<see cref="MultiLoraBatch.Gather"/>), so in a step of two sequences, one on an adapter
    /// and one on the base (then a and b), every row gets the logits of its own merged model: within 1e-5 of the largest logit for
    /// adapter rows (the merge rounds s·BA into the F32 weights, about 1e-7 relative, and the routing weights follow the router's
    /// logits as closely), within 1e-10 for base rows (the same F64 products, only the unfused order of a step with adapter rows).
    /// Without the gathered view an expert's rows do not match the step's and the step throws. Runtime-loading slots of a mixture
    /// of experts cover the attention and the start-up adapters' targets.
    /// </summary>
    [Theory]
    [InlineData("mixtral-debug", 71)]
    [InlineData("qwen2-moe-debug", 72)]
    public void ServedExpertAdaptersFollowEachExpertsGatheredRows(string preset, int seed)
    {
        var cpu = new CpuBackend(1);
        var c = AdapterCase.Write(_dir, preset, ["q", "gate", "down", "router"], seed);
        string second = Path.Combine(_dir, "second");
        AdapterCase.WriteAdapter(second, c.Config, ["up", "down"], seed + 7, c.Base);
        var served = PretrainedModel.Load(c.Base, cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter), new LoraModule("b", second)]);
        Assert.Contains(served.ServedAdapters!.Layers, l => l.Name == "blocks.1.mlp.experts.3.up");
        Assert.Contains(served.ServedAdapters.Layers, l => l.Name == "blocks.0.mlp.router");
        var plain = PretrainedModel.Load(c.Base, cpu, DType.F64);
        var mergedA = PretrainedModel.Load(c.Base, cpu, DType.F64, adapter: c.Adapter);
        var mergedB = PretrainedModel.Load(c.Base, cpu, DType.F64, adapter: second);
        var rng = new Random(seed);
        int[] tokens = Enumerable.Range(0, 24).Select(_ => rng.Next(256)).ToArray();   // (2, 12)
        var p = AdapterCase.Logits(plain, tokens);
        var a = AdapterCase.Logits(mergedA, tokens);
        var b = AdapterCase.Logits(mergedB, tokens);
        double scale = p.Max(Math.Abs);
        int half = p.Length / 2;
        double[] Step(int first, int last)
        {
            served.ServedAdapters!.SetRows(Enumerable.Repeat(first, 12).Concat(Enumerable.Repeat(last, 12)).ToArray());
            var logits = AdapterCase.Logits(served, tokens);
            served.ServedAdapters!.Clear();
            return logits;
        }
        void Within(ReadOnlySpan<double> expected, ReadOnlySpan<double> actual, double tolerance, string what)
        {
            double max = 0;
            for (int i = 0; i < expected.Length; i++) max = Math.Max(max, Math.Abs(expected[i] - actual[i]));
            TestContext.Current.TestOutputHelper?.WriteLine($"{preset} {what}: max difference {max:G3} (largest logit {scale:G3})");
            Assert.True(max <= tolerance, $"{preset} {what}: logits differ by up to {max:G3}, more than {tolerance:G3} (seed {seed})");
        }
        var bBase = Step(1, -1);
        Within(b.AsSpan(0, half), bBase.AsSpan(0, half), 1e-5 * scale, "adapter b's rows beside base rows");
        Within(p.AsSpan(half), bBase.AsSpan(half), 1e-10 * scale, "base rows beside adapter b's");
        var baseA = Step(-1, 0);
        Within(p.AsSpan(0, half), baseA.AsSpan(0, half), 1e-10 * scale, "base rows beside adapter a's");
        Within(a.AsSpan(half), baseA.AsSpan(half), 1e-5 * scale, "adapter a's rows beside base rows");
        var ab = Step(0, 1);
        Within(a.AsSpan(0, half), ab.AsSpan(0, half), 1e-5 * scale, "adapter a's rows beside b's");
        Within(b.AsSpan(half), ab.AsSpan(half), 1e-5 * scale, "adapter b's rows beside a's");
        Assert.True(NumericAssert.MaxRelativeError(p, a) > 5e-2 && NumericAssert.MaxRelativeError(p, b) > 5e-2, "an adapter hardly moves the logits");
        Assert.Equal(p, AdapterCase.Logits(served, tokens));                          // no adapter row: the base, bit for bit

        // Runtime loading: the attention and the start-up adapter's targets are served; an adapter on other expert layers is not.
        var loading = PretrainedModel.Load(c.Base, cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter)],
            loraSlots: new LoraSlotOptions { RuntimeLoading = true, MaxLoras = 2 });
        var names = loading.ServedAdapters!.Targets.Select(t => t.Name).ToList();
        Assert.Contains("k", names);
        Assert.Contains(loading.ServedAdapters.Targets, LoraTargets.IsMixtureOfExperts);
        ServedLoraAdapters.CheckFits(loading.ServedAdapters, LoraWeightMerge.Open(c.Adapter, c.Config));
        var f = Assert.Throws<InvalidDataException>(() => ServedLoraAdapters.CheckFits(loading.ServedAdapters, LoraWeightMerge.Open(second, c.Config)));
        Assert.Contains("does not serve", f.Message);
    }

    [Fact]
    public void ExpertParallelismAndTensorParallelismStillRefuseExpertAdapters()
    {
        var config = ModelPresets.Get("mixtral-debug");
        LoraOptions On(params string[] targets) => new() { Rank = 2, Targets = LoraTargets.Parse(config, targets) };
        MultiLoraBatch Served(params string[] targets) => new(["x"], LoraTargets.Parse(config, targets), 1, 4);   // serve --tp with --lora
        var messages = Tessera.Training.Parallel.ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new Tessera.Distributed.Mesh.DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new Tessera.Nn.Parallel.TensorParallelism(groups.Tp, Tessera.Nn.Parallel.ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var ep = new Tessera.Nn.Parallel.ExpertParallelism(ctx.Group);
            return new[]
            {
                Assert.Throws<NotSupportedException>(() => new Model(config, ctx.Backend, DType.F64, ArenaStorage.Deferred, tensor, lora: On("w1"))).Message,
                Assert.Throws<NotSupportedException>(() => new Model(config, ctx.Backend, DType.F64, ArenaStorage.Deferred, tensor, lora: On("router"))).Message,
                Assert.Throws<NotSupportedException>(() => new Model(config, ctx.Backend, DType.F64, lora: On("w1"), expertParallelism: ep)).Message,
                Assert.Throws<NotSupportedException>(() => new Model(config, ctx.Backend, DType.F64, ArenaStorage.Deferred, tensor, servedAdapters: Served("w1"))).Message,
                Assert.Throws<NotSupportedException>(() => new Model(config, ctx.Backend, DType.F64, ArenaStorage.Deferred, tensor, servedAdapters: Served("router"))).Message,
            };
        }, TimeSpan.FromSeconds(60));
        foreach (var m in messages)
        {
            Assert.Contains("blocks.0.mlp.experts.0.gate", m[0]);
            Assert.Contains("router", m[1]);
            Assert.Contains("LoRA", m[2]);
            Assert.Contains("tensor parallelism", m[3]);
            Assert.Contains("router", m[4]);
        }
    }
}
