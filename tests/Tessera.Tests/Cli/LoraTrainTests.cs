using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>tessera train --lora on chat jsonl and tessera export, end to end on a tiny Llama directory written here.</summary>
public sealed class LoraTrainTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-lora-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>llama-debug with the byte vocabulary, random weights, as a Hugging Face directory with a tokenizer.json.</summary>
    private string TinyModel()
    {
        var config = ModelPresets.Get("llama-debug") with { VocabSize = 256, MaxSequenceLength = 128 };
        var model = new Transformer(config, new CpuBackend(1), DType.F32);
        model.InitializeWeights(17);
        var dir = Path.Combine(_dir, "base");
        HuggingFaceExport.Write(dir, model, new HuggingFaceExportOptions { Tokenizer = new ByteTokenizer() });
        return dir;
    }

    private string Chat(params string[] lines)
    {
        var path = Path.Combine(_dir, "chat.jsonl");
        File.WriteAllLines(path, lines);
        return path;
    }

    private static readonly string[] Conversations =
    [
        """{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}""",
        """{"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]}""",
        """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye"}]}""",
    ];

    [Fact]
    public void LoraFineTuningWritesAPeftAdapterThatExportMergesIntoTheSameModel()
    {
        var model = TinyModel();
        var data = Chat(Conversations);
        var output = Path.Combine(_dir, "run");
        var (code, stdout, stderr) = CliProcess.Run("train", "--model", model, "--data", data, "--lora", "4", "--lora-alpha", "8", "--lora-targets", "q,v,gate,down",
            "--steps", "4", "--batch", "2", "--seq", "96", "--lr", "1e-2", "--warmup", "0", "--log-every", "1", "--out", output, "--threads", "1");
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("trainable parameters", stdout);
        Assert.Contains("step     4/4 | loss", stdout);
        Assert.Contains("done: 4 steps", stdout);
        var adapter = Path.Combine(output, "adapter");
        Assert.True(File.Exists(Path.Combine(adapter, "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(adapter, "adapter_model.safetensors")));

        var merged = Path.Combine(_dir, "merged");
        (code, stdout, stderr) = CliProcess.Run("export", "--model", model, "--adapter", adapter, "--out", merged);
        Assert.True(code == 0, stdout + stderr);

        // The merged directory's logits against the base with the adapter applied unmerged, in F32: 1e-5 relative (a merge
        // rounds W + s B A once in F32; the unmerged path rounds the two products separately).
        var cpu = new CpuBackend(1);
        var adapted = BaseWithAdapter(model, adapter, cpu);
        Assert.Contains(adapted.Adapters!.Layout.Parameters.Where(p => p.Name.EndsWith("lora_B", StringComparison.Ordinal)),
            p => TestTensors.ToDoubles(cpu, p.Value).Any(v => v != 0));   // trained: B left zero
        AssertMergedGivesTheAdaptedLogits(adapted, merged, cpu);
    }

    /// <summary>
    /// A mixture of experts (qwen2-moe-debug, byte vocabulary): --lora-targets gate,up,down,router trains every expert's, the
    /// shared expert's and the router's adapters; the adapter is written under Hugging Face's names (mlp.experts.J.gate_proj,
    /// mlp.shared_expert.gate_proj, mlp.gate), a resume parses the checkpoint's target names back to the same targets, and the
    /// export merges it (logits within 1e-5 relative in F32, as above).
    /// </summary>
    [Fact]
    public void LoraOnTheExpertsOfAMixtureOfExpertsTrainsResumesAndExports()
    {
        var config = ModelPresets.Get("qwen2-moe-debug") with { VocabSize = 256, MaxSequenceLength = 128 };
        var baseModel = new Transformer(config, new CpuBackend(1), DType.F32);
        baseModel.InitializeWeights(19);
        var model = Path.Combine(_dir, "moe-base");
        HuggingFaceExport.Write(model, baseModel, new HuggingFaceExportOptions { Tokenizer = new ByteTokenizer() });
        var data = Chat(Conversations);
        var output = Path.Combine(_dir, "moe-run");
        var (refused, _, why) = CliProcess.Run("train", "--model", model, "--data", data, "--lora", "4", "--tp", "2", "--steps", "1", "--out", output, "--threads", "1");
        Assert.Equal(2, refused);                                                // tensor-parallel LoRA covers dense models
        Assert.Contains("--lora with --tp 2", why);
        Assert.Contains("is a mixture of experts", why);
        Assert.False(Directory.Exists(output));
        var (code, stdout, stderr) = CliProcess.Run("train", "--model", model, "--data", data, "--lora", "4", "--lora-targets", "q,gate,up,down,router",
            "--steps", "3", "--batch", "2", "--seq", "96", "--lr", "1e-2", "--warmup", "0", "--log-every", "1", "--out", output, "--threads", "1");
        Assert.True(code == 0, stdout + stderr);
        (code, stdout, stderr) = CliProcess.Run("train", "--out", output, "--resume", "--steps", "4", "--threads", "1");
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("done: 4 steps", stdout);
        var adapter = Path.Combine(output, "adapter");
        using (var file = Tessera.Models.Safetensors.SafetensorsFile.Open(Path.Combine(adapter, "adapter_model.safetensors")))
        {
            Assert.Equal(2 * (1 + 3 * 4 + 3 + 1) * config.Layers, file.Tensors.Count);
            foreach (var name in new[] { "mlp.experts.3.gate_proj", "mlp.experts.0.down_proj", "mlp.shared_expert.up_proj", "mlp.gate", "self_attn.q_proj" })
                Assert.True(file.Contains($"base_model.model.model.layers.1.{name}.lora_B.weight"), name);
        }
        var merged = Path.Combine(_dir, "moe-merged");
        (code, stdout, stderr) = CliProcess.Run("export", "--model", model, "--adapter", adapter, "--out", merged);
        Assert.True(code == 0, stdout + stderr);
        var cpu = new CpuBackend(1);
        var adapted = BaseWithAdapter(model, adapter, cpu);
        Assert.All(adapted.Adapters!.Layout.Parameters.Where(p => p.Name.EndsWith("lora_B", StringComparison.Ordinal)),
            p => Assert.Contains(TestTensors.ToDoubles(cpu, p.Value), v => v != 0));   // every B trained: every expert saw tokens
        AssertMergedGivesTheAdaptedLogits(adapted, merged, cpu);
    }

    /// <summary>
    /// Phi-3 (phi3-debug, byte vocabulary): <c>--lora-targets qkv_proj,o_proj,gate_up_proj,down_proj</c> trains PEFT's fused adapters,
    /// written with Phi-3's names and target_modules; the base with the adapter (unmerged, F32) gives the logits of the exported
    /// merge within 1e-5 relative (as above: the merge rounds W + s B A once in F32); q alone is a usage error naming the fused modules.
    /// </summary>
    [Fact]
    public void Phi3LoraOnTheFusedModulesTrainsSavesAndExports()
    {
        var config = ModelPresets.Get("phi3-debug") with { VocabSize = 256, MaxSequenceLength = 128 };
        var baseModel = new Transformer(config, new CpuBackend(1), DType.F32);
        baseModel.InitializeWeights(19);
        var model = Path.Combine(_dir, "phi3");
        HuggingFaceExport.Write(model, baseModel, new HuggingFaceExportOptions { Tokenizer = new ByteTokenizer() });
        var data = Chat(Conversations);
        var output = Path.Combine(_dir, "run");
        var (code, stdout, stderr) = CliProcess.Run("train", "--model", model, "--data", data, "--lora", "4", "--lora-alpha", "8",
            "--lora-targets", "qkv_proj,o_proj,gate_up_proj,down_proj", "--steps", "4", "--batch", "2", "--seq", "96", "--lr", "1e-2", "--warmup", "0",
            "--log-every", "1", "--out", output, "--threads", "1");
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("on qkv, o, gate_up, down", stdout);
        Assert.Contains("done: 4 steps", stdout);
        var adapter = Path.Combine(output, "adapter");
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
        Assert.Equal(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], json["target_modules"]!.AsArray().Select(n => (string)n!).ToArray());
        using (var file = Tessera.Models.Safetensors.SafetensorsFile.Open(Path.Combine(adapter, PeftAdapter.WeightsFile)))
        {
            Assert.Equal(new Shape(2 * config.EffectiveHidden, 4), file["base_model.model.model.layers.1.mlp.gate_up_proj.lora_B.weight"].Shape);
            Assert.True(file.Contains("base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"));
        }

        var merged = Path.Combine(_dir, "merged");
        (code, stdout, stderr) = CliProcess.Run("export", "--model", model, "--adapter", adapter, "--out", merged);
        Assert.True(code == 0, stdout + stderr);
        var cpu = new CpuBackend(1);
        var adapted = BaseWithAdapter(model, adapter, cpu);
        Assert.Contains(adapted.Adapters!.Layout.Parameters.Where(p => p.Name.EndsWith("up.lora_B", StringComparison.Ordinal)),
            p => TestTensors.ToDoubles(cpu, p.Value).Any(v => v != 0));   // trained: B left zero
        Assert.Equal("phi3", MergedModelType(merged));
        AssertMergedGivesTheAdaptedLogits(adapted, merged, cpu);

        (code, stdout, stderr) = CliProcess.Run("train", "--model", model, "--data", data, "--lora", "4", "--lora-targets", "q,v",
            "--steps", "1", "--out", Path.Combine(_dir, "refused"), "--threads", "1");
        Assert.Equal(2, code);
        Assert.Contains("--lora-targets", stdout + stderr);
        Assert.Contains("qkv_proj", stdout + stderr);
    }

    /// <summary>
    /// `--quantize int8` (and `int4`, QLoRA's 4-bit base) trains the adapters over a quantized base: the run says so, the loss
    /// falls over a few steps at a high learning rate, the adapter is written, and a resume (without the option) continues over
    /// the quantized base; without --lora the option is a usage error.
    /// </summary>
    [Theory]
    [InlineData("int8")]
    [InlineData("int4")]
    public void LoraOverAQuantizedBaseTrainsTheAdapters(string quantize)
    {
        var model = TinyModel();
        var data = Chat(Conversations);
        var output = Path.Combine(_dir, "qrun-" + quantize);
        var (code, stdout, stderr) = CliProcess.Run("train", "--model", model, "--data", data, "--lora", "4", "--quantize", quantize,
            "--steps", "6", "--batch", "2", "--seq", "96", "--lr", "3e-2", "--warmup", "0", "--log-every", "1", "--out", output, "--threads", "1");
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains($"frozen ({quantize})", stdout);
        var losses = System.Text.RegularExpressions.Regex.Matches(stdout, @"\| loss (\d+\.\d+)").Select(m => double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(6, losses.Count);
        Assert.True(losses[^1] < losses[0], $"the loss did not fall: {string.Join(", ", losses)}");
        Assert.True(File.Exists(Path.Combine(output, "adapter", "adapter_model.safetensors")));
        // A resume holds the base as the run did, --quantize given again or not.
        var (code1, stdout1, stderr1) = CliProcess.Run("train", "--out", output, "--resume", "--steps", "8", "--threads", "1");
        Assert.True(code1 == 0, stdout1 + stderr1);
        Assert.Contains($"frozen ({quantize})", stdout1);
        Assert.Contains("done: 8 steps", stdout1);
        var (code2, _, err2) = CliProcess.Run("train", "--model", model, "--data", data, "--quantize", quantize, "--steps", "1", "--out", Path.Combine(_dir, "q2-" + quantize));
        Assert.Equal(2, code2);
        Assert.Contains("add --lora R", err2);
    }

    [Fact]
    public void BadChatDataAndBadTargetsFailClearlyAndWriteNothing()
    {
        var model = TinyModel();
        var output = Path.Combine(_dir, "run");
        var data = Chat(Conversations[0], """{"messages": [{"role": "user", "content": "no reply"}]}""");
        var (code, _, stderr) = CliProcess.Run("train", "--model", model, "--data", data, "--lora", "4", "--steps", "1", "--out", output, "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("chat.jsonl:2: no assistant turn", stderr);
        Assert.False(Directory.Exists(output));

        (code, _, stderr) = CliProcess.Run("train", "--model", model, "--data", Chat(Conversations), "--lora", "4", "--lora-targets", "q,attn", "--steps", "1", "--out", output, "--threads", "1");
        Assert.Equal(2, code);
        Assert.Contains("LoRA target 'attn' names no layer", stderr);
        Assert.False(Directory.Exists(output));

        (code, _, stderr) = CliProcess.Run("train", "--model", model, "--data", Chat(Conversations), "--lora-targets", "q", "--steps", "1", "--out", output, "--threads", "1");
        Assert.Equal(2, code);
        Assert.Contains("add --lora R", stderr);
        Assert.False(Directory.Exists(output));
    }

    private static readonly string[] Quick = ["--lora-targets", "q,v,down", "--batch", "2", "--seq", "96", "--lr", "1e-2", "--warmup", "0", "--log-every", "1", "--threads", "1"];

    [Fact]
    public void ThreadRanksWithZeroTrainTheAdaptersAndAResumedRunEndsWhereTheUninterruptedOneDoes()
    {
        var model = TinyModel();
        var data = Chat(Conversations);
        // 2 thread ranks, ZeRO-2 over the adapters, 4 steps in one go.
        var whole = Path.Combine(_dir, "whole");
        var (code, stdout, stderr) = CliProcess.Run(["train", "--model", model, "--data", data, "--lora", "4", "--steps", "4", "--checkpoint-every", "2",
            "--ranks", "2", "--zero", "2", "--out", whole, .. Quick]);
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("thread ranks: 2 data-parallel rank(s), ZeRO stage 2 over the adapters", stdout);
        Assert.Contains("done: 4 steps", stdout);
        // The same run, "crashed" after its step-2 checkpoint (the later one removed), then resumed: the same adapter, byte for byte.
        var crashed = Path.Combine(_dir, "crashed");
        (code, stdout, stderr) = CliProcess.Run(["train", "--model", model, "--data", data, "--lora", "4", "--steps", "4", "--checkpoint-every", "2",
            "--ranks", "2", "--zero", "2", "--out", crashed, .. Quick]);
        Assert.True(code == 0, stdout + stderr);
        Directory.Delete(Path.Combine(crashed, "checkpoints", "step_000004"), recursive: true);
        File.WriteAllText(Path.Combine(crashed, "checkpoints", "latest"), "step_000002\n");
        (code, stdout, stderr) = CliProcess.Run("train", "--out", crashed, "--resume", "--ranks", "2", "--zero", "2", "--threads", "1");
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("resuming", stdout);
        Assert.Contains("at step 2 of 4", stdout);
        Assert.Contains("done: 4 steps", stdout);
        foreach (var file in new[] { Path.Combine("adapter", "adapter_model.safetensors"), Path.Combine("checkpoints", "step_000004", "lora_state.safetensors") })
            Assert.True(File.ReadAllBytes(Path.Combine(whole, file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(crashed, file))), $"{file} differs after the resume");
    }

    [Fact]
    public void LoraUsageErrorsNameTheOptionAndWriteNothing()
    {
        var model = TinyModel();
        var data = Chat(Conversations);
        var output = Path.Combine(_dir, "run");
        string Refused(params string[] extra)
        {
            var (code, _, stderr) = CliProcess.Run(["train", "--model", model, "--data", data, "--lora", "4", "--steps", "2", "--out", output, "--threads", "1", .. extra]);
            Assert.Equal(2, code);
            Assert.False(Directory.Exists(output), "a refused command wrote its run directory");
            return stderr;
        }
        var pp = Refused("--pp", "2");
        Assert.Contains("--lora does not combine with --pp", pp);
        Assert.Contains("pipeline stages build no adapters", pp);
        Assert.Contains("--lora does not combine with --offload", Refused("--ranks", "2", "--offload"));
        Assert.Contains("--lora with --tp and --quantize int8", Refused("--tp", "2", "--quantize", "int8"));
        Assert.Contains("--zero needs --ranks", Refused("--zero", "1"));
        Assert.Contains("--resume: " + output + " has no checkpoint", Refused("--resume"));

        // A run to resume: another rank or other targets than its checkpoint's are refused, naming both.
        var (ok, stdout, stderr) = CliProcess.Run(["train", "--model", model, "--data", data, "--lora", "4", "--steps", "2", "--out", output, .. Quick]);
        Assert.True(ok == 0, stdout + stderr);
        var before = Directory.GetFiles(output, "*", SearchOption.AllDirectories).ToDictionary(f => f, File.GetLastWriteTimeUtc);
        foreach (var (args, message) in new[]
        {
            (new[] { "--lora", "8" }, "--lora 8 differs from the run's checkpoint (4)"),
            (new[] { "--lora", "4", "--lora-targets", "q" }, "--lora-targets q differ from the run's checkpoint (q,v,down)"),
            (new[] { "--lora", "4", "--adapter", output }, "give one of them"),
        })
        {
            var (code, _, err) = CliProcess.Run(["train", "--out", output, "--resume", "--steps", "4", "--threads", "1", .. args]);
            Assert.Equal(2, code);
            Assert.Contains(message, err);
        }
        Assert.Equal(before, Directory.GetFiles(output, "*", SearchOption.AllDirectories).ToDictionary(f => f, File.GetLastWriteTimeUtc));
    }

    /// <summary>
    /// <c>train --lora --tp 2 --sp</c> (two CPU thread ranks, the base and the adapters split, every linear target, dropout 0.1)
    /// logs one device's losses within 1e-4 (F32: the same sums in another order), then resumes under tp 2 from its checkpoint
    /// as one device resumes from its own. OUT/adapter is one device's file: the same adapter_config.json and tensor names and
    /// shapes, values within 1e-4 norm-wise (F32 rounding carried through AdamW; a missing reduction is off by 1e-2 or more),
    /// and export merges it into the model the adapter stands for (logits within 1e-5, as above).
    /// </summary>
    [Fact]
    public void LoraUnderTensorParallelismTrainsAndResumesLikeOneDeviceAndSavesTheWholeAdapter()
    {
        var model = TinyModel();
        var data = Chat(Conversations);
        string[] Common(string run) => ["--model", model, "--data", data, "--lora", "4", "--lora-targets", "q,k,v,o,gate,up,down", "--lora-dropout", "0.1",
            "--batch", "2", "--seq", "96", "--lr", "1e-2", "--warmup", "0", "--log-every", "1", "--threads", "1", "--out", run];
        var one = Path.Combine(_dir, "one");
        var split = Path.Combine(_dir, "tp");
        foreach (var (run, layout) in new[] { (one, Array.Empty<string>()), (split, new[] { "--tp", "2", "--sp" }) })
        {
            var (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "3", .. layout, .. Common(run)]);
            Assert.True(code == 0, stdout + stderr);
            (code, stdout, stderr) = CliProcess.Run(["train", "--out", run, "--resume", "--steps", "5", "--threads", "1", .. layout]);
            Assert.True(code == 0, stdout + stderr);
            Assert.Contains("done: 5 steps", stdout);
            if (layout.Length > 0) Assert.Contains("2 ranks as dp 1 x tp 2 with sequence parallelism", stdout);
        }
        TrainRunMetrics.AssertLossesMatchOneDevice(one, split, 5, "tp 2 + sp");

        string oneAdapter = Path.Combine(one, "adapter"), tpAdapter = Path.Combine(split, "adapter");
        Assert.Equal(File.ReadAllText(Path.Combine(oneAdapter, PeftAdapterConfig.FileName)), File.ReadAllText(Path.Combine(tpAdapter, PeftAdapterConfig.FileName)));
        using (var expected = Tessera.Models.Safetensors.SafetensorsFile.Open(Path.Combine(oneAdapter, PeftAdapter.WeightsFile)))
        using (var actual = Tessera.Models.Safetensors.SafetensorsFile.Open(Path.Combine(tpAdapter, PeftAdapter.WeightsFile)))
        {
            Assert.Equal(expected.Tensors.Select(t => (t.Name, t.Shape)).Order(), actual.Tensors.Select(t => (t.Name, t.Shape)).Order());
            foreach (var t in expected.Tensors)
                NumericAssert.Close(expected.ReadAsDouble(t.Name), actual.ReadAsDouble(t.Name), 1e-4, $"OUT/adapter under tp 2: {t.Name}");
        }
        var merged = Path.Combine(_dir, "tp-merged");
        var (c, o, e) = CliProcess.Run("export", "--model", model, "--adapter", tpAdapter, "--out", merged);
        Assert.True(c == 0, o + e);
        var cpu = new CpuBackend(1);
        var adapted = BaseWithAdapter(model, tpAdapter, cpu);
        adapted.Adapters!.DropoutEnabled = false;                            // the adapter says lora_dropout 0.1: off to evaluate
        AssertMergedGivesTheAdaptedLogits(adapted, merged, cpu);
    }

    /// <summary>The base model of <paramref name="model"/> (F32, frozen) with the PEFT adapter <paramref name="adapter"/> unmerged.</summary>
    private static Transformer BaseWithAdapter(string model, string adapter, CpuBackend cpu)
    {
        using var hf = HuggingFaceModelDirectory.Open(model);
        var adapted = new Transformer(hf.Config, cpu, DType.F32, ArenaStorage.Frozen, lora: PeftAdapter.ReadOptions(adapter, hf.Config));
        hf.LoadInto(adapted.Parameters.Parameters, cpu);
        PeftAdapter.Load(adapter, adapted.Adapters!);
        return adapted;
    }

    private static string MergedModelType(string merged)
    {
        using var hf = HuggingFaceModelDirectory.Open(merged);
        return hf.Config.EffectiveModelType;
    }

    /// <summary>
    /// The merged export <paramref name="merged"/> gives <paramref name="adapted"/>'s logits for "Hello there!" within 1e-5 relative
    /// (F32: the merge rounds W + s B A once, the unmerged path rounds the two products separately).
    /// </summary>
    private static void AssertMergedGivesTheAdaptedLogits(Transformer adapted, string merged, CpuBackend cpu)
    {
        using var mergedHf = HuggingFaceModelDirectory.Open(merged);
        var full = new Transformer(mergedHf.Config, cpu, DType.F32);
        mergedHf.LoadInto(full.Parameters.Parameters, cpu);
        var tokens = cpu.Allocate(new Shape(1, 12), DType.I32);
        cpu.CopyFromHost<int>(System.Text.Encoding.ASCII.GetBytes("Hello there!").Select(b => (int)b).ToArray(), tokens);
        NumericAssert.Close(TestTensors.ToDoubles(cpu, adapted.Forward(tokens)), TestTensors.ToDoubles(cpu, full.Forward(tokens)), 1e-5, "merged export against base + adapter");
    }
}
