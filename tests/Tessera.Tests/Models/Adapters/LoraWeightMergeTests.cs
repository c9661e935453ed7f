using Tessera.Distributed.Mesh;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Nn.Parallel;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Models.Adapters;

/// <summary>
/// Loading a model with a PEFT LoRA adapter merged as the weights are read (<see cref="LoraWeightMerge"/>,
/// <c>PretrainedModel.Load(adapter:)</c>) gives the model <c>tessera export</c> writes, bit for bit: the merge is export's own
/// products (<c>LoraLinear.MergeInto</c>, the CPU backend, F32) on the same F32 values, and the export stores F32, so the merged
/// weights, and hence every logit, are the same bits; any other tolerance would hide a merge done differently. Quantizing after
/// the merge equals quantizing the exported directory (the same F32 input to the same quantizer), and tensor-parallel thread
/// ranks hold exactly the slices of the merged weights.
/// </summary>
public sealed class LoraWeightMergeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-adapter-merge-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static int[] Tokens(int seed)
    {
        var rng = TestRandom.Create(seed);
        return Enumerable.Range(0, 2 * 12).Select(_ => rng.Next(256)).ToArray();
    }

    /// <summary>
    /// F32 on the CPU, every target of each family (Llama's q, k, v parts of the fused QKV, o and the MLP; GPT-2's Conv1D c_attn as
    /// one fused adapter, attn.c_proj, c_fc, mlp.c_proj): every weight and every logit of base + --adapter equals the exported
    /// directory's, bit for bit, and the adapter moves the logits (so a silently dropped adapter fails).
    /// </summary>
    [Theory]
    [InlineData("llama-debug", 301)]
    [InlineData("gpt2-debug", 302)]
    [InlineData("phi3-debug", 303)]
    public void ALoadWithTheAdapterEqualsTheExportedMergeBitForBit(string preset, int seed)
    {
        var cpu = new CpuBackend(2);
        var c = AdapterCase.Write(_dir, preset, AdapterCase.AllTargets(preset), seed);
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
        // Every adapted layer's weight changed: Llama's qkv, o, gate, up, down; GPT-2's c_attn, c_proj, c_fc, mlp c_proj; Phi-3's
        // qkv, o, gate and up (one gate_up_proj adapter over both), down; per block.
        int perBlock = preset.StartsWith("gpt2", StringComparison.Ordinal) ? 4 : 5;
        Assert.Equal(perBlock * c.Config.Layers, changed);

        var tokens = Tokens(seed);
        var logits = AdapterCase.Logits(adapted, tokens);
        Assert.Equal(AdapterCase.Logits(exported, tokens), logits);
        double moved = NumericAssert.MaxRelativeError(logits, AdapterCase.Logits(plain, tokens));
        Assert.True(moved > 5e-2, $"{preset}: the adapter moves the logits by only {moved:E2} relative (seed {seed})");
    }

    /// <summary>--quantize int8 (and fp8) after the merge: the logits equal those of the exported directory quantized as it loads, exactly.</summary>
    [Theory]
    [InlineData("llama-debug", WeightQuantization.Int8, 311)]
    [InlineData("gpt2-debug", WeightQuantization.Int8, 312)]
    [InlineData("llama-debug", WeightQuantization.Fp8, 313)]
    public void QuantizingAfterTheMergeEqualsQuantizingTheExportedDirectory(string preset, WeightQuantization quantization, int seed)
    {
        var cpu = new CpuBackend(2);
        var c = AdapterCase.Write(_dir, preset, AdapterCase.AllTargets(preset), seed);
        string merged = c.Export(Path.Combine(_dir, "merged"));
        var adapted = PretrainedModel.Load(c.Base, cpu, DType.F32, quantization: quantization, adapter: c.Adapter);
        var exported = PretrainedModel.Load(merged, cpu, DType.F32, quantization: quantization);
        var plain = PretrainedModel.Load(c.Base, cpu, DType.F32, quantization: quantization);
        var tokens = Tokens(seed);
        var logits = AdapterCase.Logits(adapted, tokens);
        Assert.Equal(AdapterCase.Logits(exported, tokens), logits);
        Assert.True(NumericAssert.MaxRelativeError(logits, AdapterCase.Logits(plain, tokens)) > 5e-2, $"{preset}: the adapter hardly moves the quantized logits (seed {seed})");
    }

    /// <summary>
    /// Two tensor-parallel thread ranks, each loading with the adapter: every parameter is exactly its slice of one device's merged
    /// weights (the merge happens before the slicing), and greedy generation gives one device's tokens. In F64, as the tensor-parallel
    /// generation and serving tests run: the ranks' partial products agree with one device's to rounding, so the tokens must match.
    /// </summary>
    [Theory]
    [InlineData("llama-debug", 321)]
    [InlineData("gpt2-debug", 322)]
    [InlineData("phi3-debug", 323)]
    public void TensorParallelRanksLoadTheSlicesOfTheMergedWeights(string preset, int seed)
    {
        var c = AdapterCase.Write(_dir, preset, AdapterCase.AllTargets(preset), seed);
        var one = PretrainedModel.Load(c.Base, new CpuBackend(1), DType.F64, adapter: c.Adapter);
        var plain = PretrainedModel.Load(c.Base, new CpuBackend(1), DType.F64);
        Assert.False(one.Backend.ToArray<double>(one.Layout["blocks.0.attn.qkv.weight"].Value).AsSpan()
            .SequenceEqual(plain.Backend.ToArray<double>(plain.Layout["blocks.0.attn.qkv.weight"].Value)), "the adapter left the fused QKV weight unchanged");
        var prompt = Tokens(seed).Take(6).ToArray();
        var greedy = new GenerationOptions { MaxNewTokens = 12, Sampling = new SamplingOptions { Temperature = 0 } };
        var expected = new TextGenerator(one).Generate(prompt, greedy).ToList();
        var ranks = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var model = PretrainedModel.Load(c.Base, ctx.Backend, DType.F64, tensorParallelism: tensor, adapter: c.Adapter);
            int split = 0;
            foreach (var p in model.Layout.Parameters)
            {
                var whole = one.Backend.ToArray<double>(one.Layout[p.Name].Value);
                Assert.True(p.LocalValues(whole).AsSpan().SequenceEqual(ctx.Backend.ToArray<double>(p.Value)),
                    $"rank {ctx.Rank}: '{p.Name}' ({p.Placement}) is not its slice of the merged weight (seed {seed})");
                if (p.Shape != p.GlobalShape) split++;
            }
            Assert.True(split > 0, "no parameter is split: the model is not tensor-parallel");
            return new TextGenerator(model).Generate(prompt, greedy).ToList();
        }, TimeSpan.FromSeconds(60));
        Assert.Equal(12, expected.Count);
        foreach (var r in ranks) Assert.Equal(expected, r);
    }

    /// <summary>
    /// A bad adapter is refused when it is given, before any weight is read, with a message naming the file and what is wrong:
    /// a missing directory or file, malformed JSON, target modules of another family, tensors of another model's shapes or layers.
    /// </summary>
    [Fact]
    public void ABadAdapterIsRefusedNamingTheProblemBeforeAnyWeightIsRead()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", ["q", "v", "down"], 331);
        string Refusal<T>(string adapter) where T : Exception
        {
            using var hf = HuggingFaceModelDirectory.Open(c.Base);
            var e = Assert.Throws<T>(() => hf.MergeAdapter(adapter));
            Assert.Equal(0, hf.BytesRead);
            Assert.Null(hf.Adapter);
            return e.Message;
        }
        string Copy(string name)
        {
            string to = Path.Combine(_dir, name);
            Directory.CreateDirectory(to);
            foreach (var f in Directory.GetFiles(c.Adapter)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
            return to;
        }

        Assert.Contains("no such adapter directory", Refusal<DirectoryNotFoundException>(Path.Combine(_dir, "nowhere")));
        var noConfig = Copy("no-config");
        File.Delete(Path.Combine(noConfig, PeftAdapterConfig.FileName));
        Assert.Contains($"{PeftAdapterConfig.FileName}: missing", Refusal<FileNotFoundException>(noConfig));
        var noWeights = Copy("no-weights");
        File.Delete(Path.Combine(noWeights, PeftAdapter.WeightsFile));
        Assert.Contains($"{PeftAdapter.WeightsFile}: missing", Refusal<FileNotFoundException>(noWeights));
        var badJson = Copy("bad-json");
        File.WriteAllText(Path.Combine(badJson, PeftAdapterConfig.FileName), "{\"peft_type\": \"LORA\", \"r\": ");
        Assert.Contains("not valid JSON", Refusal<InvalidDataException>(badJson));
        var noRank = Copy("no-rank");
        File.WriteAllText(Path.Combine(noRank, PeftAdapterConfig.FileName), """{"peft_type": "LORA", "task_type": "CAUSAL_LM", "lora_alpha": 8, "target_modules": ["q_proj"]}""");
        Assert.Contains("r must be a positive integer", Refusal<InvalidDataException>(noRank));

        // A GPT-2 adapter on a Llama base: its target modules are no layers of the model.
        var gpt2 = Path.Combine(_dir, "gpt2-adapter");
        AdapterCase.WriteAdapter(gpt2, ModelPresets.Get("gpt2-debug") with { VocabSize = 256, MaxSequenceLength = 128 }, ["c_attn"], 332);
        Assert.Contains("target_modules: LoRA target 'c_attn' names no layer of a Llama model", Refusal<InvalidDataException>(gpt2));
        // An adapter of a wider MLP: the shapes do not fit; of a deeper model: tensors the base's layers do not have.
        var wide = Path.Combine(_dir, "wide-adapter");
        AdapterCase.WriteAdapter(wide, c.Config with { Hidden = 96 }, ["q", "v", "down"], 333);
        Assert.Contains("mlp.down_proj.lora_A.weight' is (4, 96); the model's adapter blocks.0.mlp.proj.lora_A is (4, 64)", Refusal<InvalidDataException>(wide));
        var deep = Path.Combine(_dir, "deep-adapter");
        AdapterCase.WriteAdapter(deep, c.Config with { Layers = c.Config.Layers + 1 }, ["q", "v", "down"], 334);
        Assert.Contains("tensor(s) the model's adapters do not have, e.g. 'base_model.model.model.layers.2.", Refusal<InvalidDataException>(deep));

        // The good adapter is taken, once, and says what it merges.
        using var good = HuggingFaceModelDirectory.Open(c.Base);
        var merge = good.MergeAdapter(c.Adapter);
        Assert.Equal($"{c.Adapter} (r = 4, alpha = 8, {2 * c.Config.Layers} layers)", merge.Summary);   // qkv and the MLP's down per block
        Assert.True(merge.Adapts("blocks.0.attn.qkv.weight") && merge.Adapts("blocks.1.mlp.proj.weight") && !merge.Adapts("blocks.0.attn.proj.weight"));
        Assert.Throws<InvalidOperationException>(() => good.MergeAdapter(c.Adapter));
    }
}
