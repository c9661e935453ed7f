using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Safetensors;
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

/// <summary>
/// LoRA on Phi-3's fused modules (phi3-debug: C = 32, 4 heads, 2 key/value heads of 8, F = 64, 2 blocks), as PEFT targets them:
/// qkv_proj one adapter over Tessera's fused QKV, gate_up_proj one adapter over Tessera's two layers gate and up (A shared, B split
/// by rows), o_proj, down_proj. Gradients against central differences and merging are in <see cref="LoraTests"/>' theories.
/// </summary>
public sealed class Phi3LoraTests
{
    private static readonly string[] Fused = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"];

    [Fact]
    public void PhisFusedModulesAreTheTargetsAndGateUpSharesOneA()
    {
        var config = ModelPresets.Get("phi3-debug");
        var targets = LoraTargets.Parse(config, Fused);
        Assert.Equal(["qkv", "o", "gate_up", "down"], targets.Select(t => t.Name));
        Assert.Equal(targets, LoraTargets.Parse(config, ["qkv", "o", "gate_up", "down"]));       // short names: the same targets
        Assert.Equal(targets, LoraTargets.Parse(config, LoraTargets.Of(config).Select(r => r.Short)));
        Assert.Equal(["qkv", "o"], LoraTargets.DefaultOf(config));
        var gateUp = targets[2];
        Assert.Equal(("blocks.*.mlp.gate", "blocks.*.mlp.up", (int?)null), (gateUp.LayerPattern, gateUp.FusedWith, gateUp.Part));
        Assert.True(gateUp.Matches("blocks.1.mlp.up") && gateUp.Matches("blocks.1.mlp.gate") && !gateUp.Matches("blocks.1.mlp.proj"));
        Assert.Equal("blocks.1.mlp.gate", gateUp.OwnerOf("blocks.1.mlp.up"));
        Assert.Null(gateUp.OwnerOf("blocks.1.mlp.gate"));

        // q, k, v, gate and up alone are refused for phi3 by name: PEFT cannot express them for the fused checkpoint.
        foreach (var name in new[] { "q", "k_proj", "v", "gate", "up_proj" })
        {
            var e = Assert.Throws<ArgumentException>(() => LoraTargets.Parse(config, [name]));
            Assert.Contains($"'{name}'", e.Message);
            Assert.Contains("phi3", e.Message);
            Assert.Contains("qkv_proj", e.Message);
            Assert.Contains("gate_up_proj", e.Message);
        }
        Assert.Contains("given twice", Assert.Throws<ArgumentException>(() => LoraTargets.Parse(config, ["gate_up", "gate_up_proj"])).Message);
        // The fused names stay Phi-3's: a Llama model has no qkv_proj.
        Assert.Contains("'gate_up_proj' names no layer", Assert.Throws<ArgumentException>(() => LoraTargets.Parse(ModelPresets.Get("llama-debug"), ["gate_up_proj"])).Message);

        var lora = new LoraOptions { Rank = 4, Targets = targets };
        var adapters = new Transformer(config, new CpuBackend(1), DType.F32, ArenaStorage.Deferred, lora: lora).Adapters!;
        int c = config.Embedding, f = config.EffectiveHidden, qkv = (config.Heads + 2 * config.KvHeads) * config.HeadSize;
        Assert.Equal(
            [("blocks.0.attn.qkv.lora_A", new Shape(4, c)), ("blocks.0.attn.qkv.lora_B", new Shape(qkv, 4)),
             ("blocks.0.attn.proj.lora_A", new Shape(4, c)), ("blocks.0.attn.proj.lora_B", new Shape(c, 4)),
             ("blocks.0.mlp.gate.lora_A", new Shape(4, c)), ("blocks.0.mlp.gate.lora_B", new Shape(f, 4)), ("blocks.0.mlp.up.lora_B", new Shape(f, 4)),
             ("blocks.0.mlp.proj.lora_A", new Shape(4, f)), ("blocks.0.mlp.proj.lora_B", new Shape(c, 4))],
            adapters.Layout.Parameters.Where(p => p.Name.StartsWith("blocks.0.", StringComparison.Ordinal)).Select(p => (p.Name, p.Shape)));
        var gate = adapters.Layers.Single(l => l.Name == "blocks.0.mlp.gate");
        var up = adapters.Layers.Single(l => l.Name == "blocks.0.mlp.up");
        Assert.Same(gate.Parts.Single().A, up.Parts.Single().A);                                 // one A
        Assert.Equal(gate.DropoutSeed, up.DropoutSeed);                                          // one dropout stream
        Assert.NotEqual(gate.DropoutSeed, adapters.Layers.Single(l => l.Name == "blocks.0.attn.qkv").DropoutSeed);
        Assert.Equal((0, qkv), (adapters.Layers.Single(l => l.Name == "blocks.0.attn.qkv").Parts.Single().RowStart,
            adapters.Layers.Single(l => l.Name == "blocks.0.attn.qkv").Parts.Single().Rows));   // the whole fused QKV
    }

    /// <summary>
    /// PEFT's layout with Phi-3's real names: qkv_proj's B over all (H + 2K)·D rows, gate_up_proj's A the shared one and its B (2F, r)
    /// the gate's rows then the up's; target_modules the four fused modules; read back bit for bit (F32 values written as F32).
    /// </summary>
    [Fact]
    public void PeftRoundTripWritesPhisFusedNamesAndReadsBackBitForBit()
    {
        const int seed = 611;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var cpu = new CpuBackend(1);
        var dir = Directory.CreateTempSubdirectory("tessera-peft-phi3-").FullName;
        try
        {
            var model = LoraTests.Model(cpu, DType.F32, seed, Fused, alpha: 16, preset: "phi3-debug");
            var adapters = model.Adapters!;
            string adapter = Path.Combine(dir, "adapter");
            PeftAdapter.Save(adapter, adapters, "microsoft/Phi-3-mini-4k-instruct");
            var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
            Assert.Equal(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], json["target_modules"]!.AsArray().Select(n => (string)n!).ToArray());
            Assert.False((bool)json["fan_in_fan_out"]!);
            var config = model.Config;
            int c = config.Embedding, f = config.EffectiveHidden, qkv = (config.Heads + 2 * config.KvHeads) * config.HeadSize;
            using (var file = SafetensorsFile.Open(Path.Combine(adapter, PeftAdapter.WeightsFile)))
            {
                Assert.Equal(config.Layers * 4 * 2, file.Tensors.Count);
                const string p = "base_model.model.model.layers.";
                Assert.Equal(new Shape(4, c), file[p + "0.self_attn.qkv_proj.lora_A.weight"].Shape);
                Assert.Equal(new Shape(qkv, 4), file[p + "1.self_attn.qkv_proj.lora_B.weight"].Shape);
                Assert.Equal(new Shape(c, 4), file[p + "0.self_attn.o_proj.lora_B.weight"].Shape);
                Assert.Equal(new Shape(4, c), file[p + "1.mlp.gate_up_proj.lora_A.weight"].Shape);
                Assert.Equal(new Shape(2 * f, 4), file[p + "1.mlp.gate_up_proj.lora_B.weight"].Shape);
                Assert.Equal(new Shape(4, f), file[p + "0.mlp.down_proj.lora_A.weight"].Shape);
                var b = file.ReadAsDouble(p + "1.mlp.gate_up_proj.lora_B.weight");
                var gateB = adapters.Read(adapters.Layout["blocks.1.mlp.gate.lora_B"]);
                var upB = adapters.Read(adapters.Layout["blocks.1.mlp.up.lora_B"]);
                Assert.Equal(gateB.Concat(upB), b);                                              // the gate's F rows, then the up's
                Assert.Equal(adapters.Read(adapters.Layout["blocks.1.mlp.gate.lora_A"]), file.ReadAsDouble(p + "1.mlp.gate_up_proj.lora_A.weight"));
            }
            var options = PeftAdapter.ReadOptions(adapter, config);
            Assert.Equal(["qkv", "o", "gate_up", "down"], options.Targets.Select(t => t.Name));
            var loaded = new Transformer(config, cpu, DType.F32, ArenaStorage.Frozen, lora: options);
            PeftAdapter.Load(adapter, loaded.Adapters!);
            Assert.Equal(TestTensors.ToDoubles(cpu, adapters.Arena.Values), TestTensors.ToDoubles(cpu, loaded.Adapters!.Arena.Values));   // bit for bit
            Assert.Equal(TestTensors.ToDoubles(cpu, adapters.Arena.Values), TestTensors.ToDoubles(cpu, loaded.Adapters!.Arena.Values));

            // An adapter of the fused modules does not load into a model adapting only some of them: named before anything is written.
            var narrower = new Transformer(config, cpu, DType.F32, ArenaStorage.Frozen, lora: options with { Targets = LoraTargets.Parse(config, ["gate_up"]) });
            Assert.Contains("do not have", Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(adapter, narrower.Adapters!)).Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// Training phi3-debug's adapters on the four fused modules (F64, dropout 0.1, AdamW) over a frozen base: the loss on one
    /// repeated batch falls, the base weights stay bit for bit, every adapter moves (the up layer's B too, through the shared A's
    /// path), and gate and up drew the same number of masks from one stream (one dropout(x) for the fused module).
    /// </summary>
    [Fact]
    public void TrainingTheFusedAdaptersLowersTheLossAndLeavesTheBaseBitForBit()
    {
        const int seed = 612;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var cpu = new CpuBackend(1);
        var model = LoraTests.Model(cpu, DType.F64, seed, Fused, dropout: 0.1, preset: "phi3-debug");
        LayerCheck.Randomize(cpu, model.Parameters, new Random(seed));   // a base of O(0.3) weights, so its features carry the tokens
        Assert.True(model.Parameters.Frozen);
        Assert.All(model.Layout.Parameters, p => Assert.False(p.RequiresGradient));
        var baseBefore = TestTensors.ToDoubles(cpu, model.Parameters.Values);
        var adapters = model.Adapters!;
        var before = adapters.Layout.Parameters.ToDictionary(p => p.Name, adapters.Read);
        var examples = Enumerable.Range(0, 2).Select(i => new ChatExample(i + 1,
            Enumerable.Range(0, 10).Select(j => (i * 7 + j * 3) % 96).ToArray(), Enumerable.Range(0, 10).Select(j => j >= 2).ToArray())).ToList();
        var loader = new ChatExampleLoader(examples, 2, 8);
        var options = new TrainerOptions { Steps = 30, BatchSize = 2, SequenceLength = 8, LearningRate = 5e-2, WarmupSteps = 0, EvalEvery = 0, LogEvery = 1, CheckpointEvery = 0 };
        var trainer = new Trainer(model, new SingleDevice(adapters.Arena, new AdamWOptimizer(adapters.Arena, new AdamWOptions())), loader, null, options);
        var losses = Enumerable.Range(0, 30).Select(_ => trainer.TrainStep()).ToArray();
        TestContext.Current.TestOutputHelper?.WriteLine("losses " + string.Join(", ", losses.Select(l => l.ToString("F4"))));
        Assert.All(losses, l => Assert.True(double.IsFinite(l)));
        Assert.True(losses[^3..].Average() < 0.3 * losses[..3].Average(), $"the loss did not fall: {string.Join(", ", losses)}");
        Assert.Equal(baseBefore, TestTensors.ToDoubles(cpu, model.Parameters.Values));       // bit for bit
        foreach (var p in adapters.Layout.Parameters) Assert.NotEqual(before[p.Name], adapters.Read(p));
        for (int b = 0; b < model.Config.Layers; b++)
        {
            var gate = adapters.Layers.Single(l => l.Name == $"blocks.{b}.mlp.gate");
            var up = adapters.Layers.Single(l => l.Name == $"blocks.{b}.mlp.up");
            Assert.True(gate.MasksDrawn > 0);
            Assert.Equal((gate.DropoutSeed, gate.MasksDrawn), (up.DropoutSeed, up.MasksDrawn));
        }
    }

    /// <summary>
    /// The shared A's gradient is the sum of both layers' terms: with the up layer's B zero, the gate's term alone; with the gate's
    /// B zero, the up's alone; the two add to the gradient with both (F64; 1e-12 relative: the same products summed in another
    /// order). Each alone differs from the sum by O(1), so a backward that kept one half fails (central differences in
    /// <see cref="LoraTests"/> check the whole).
    /// </summary>
    [Fact]
    public void TheSharedAsGradientIsTheSumOfTheGateAndUpTerms()
    {
        const int seed = 613;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var cpu = new CpuBackend(1);
        var model = LoraTests.Model(cpu, DType.F64, seed, ["gate_up_proj"], preset: "phi3-debug");
        var adapters = model.Adapters!;
        var rng = new Random(seed);
        var tokens = cpu.FromArray(Enumerable.Range(0, 12).Select(_ => rng.Next(96)).ToArray(), 2, 6);
        var targets = cpu.FromArray(Enumerable.Range(0, 12).Select(_ => rng.Next(96)).ToArray(), 2, 6);
        var a = adapters.Layout["blocks.0.mlp.gate.lora_A"];
        var gateB = adapters.Layout["blocks.0.mlp.gate.lora_B"];
        var upB = adapters.Layout["blocks.0.mlp.up.lora_B"];
        var g = adapters.Read(gateB);
        var u = adapters.Read(upB);

        // dA = s (dy_gate B_gate)^T x + s (dy_up B_up)^T x: zeroing one B after the forward (so dy and x stay the same) drops its term.
        double[] GradientWith(bool keepGate, bool keepUp)
        {
            adapters.Write(gateB, g);
            adapters.Write(upB, u);
            adapters.Arena.ZeroGrad();
            model.Loss(tokens, targets, 0, lossScale: 1.0 / 12);
            if (!keepGate) adapters.Write(gateB, new double[g.Length]);
            if (!keepUp) adapters.Write(upB, new double[u.Length]);
            model.Backward(0);
            return TestTensors.ToDoubles(cpu, a.Grad);
        }
        var both = GradientWith(true, true);
        var gateOnly = GradientWith(true, false);
        var upOnly = GradientWith(false, true);
        var sum = gateOnly.Zip(upOnly, (x, y) => x + y).ToArray();
        NumericAssert.Close(both, sum, 1e-12, "dA against the gate's term plus the up's");
        Assert.True(NumericAssert.MaxRelativeError(gateOnly, both) > 1e-2 && NumericAssert.MaxRelativeError(upOnly, both) > 1e-2, "one half alone is the whole gradient");
    }
}
