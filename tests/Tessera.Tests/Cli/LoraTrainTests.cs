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
        using var hf = HuggingFaceModelDirectory.Open(model);
        var adapted = new Transformer(hf.Config, cpu, DType.F32, ArenaStorage.Frozen, lora: PeftAdapter.ReadOptions(adapter, hf.Config));
        hf.LoadInto(adapted.Parameters.Parameters, cpu);
        PeftAdapter.Load(adapter, adapted.Adapters!);
        Assert.Contains(adapted.Adapters!.Layout.Parameters.Where(p => p.Name.EndsWith("lora_B", StringComparison.Ordinal)),
            p => TestTensors.ToDoubles(cpu, p.Value).Any(v => v != 0));   // trained: B left zero
        using var mergedHf = HuggingFaceModelDirectory.Open(merged);
        var full = new Transformer(mergedHf.Config, cpu, DType.F32);
        mergedHf.LoadInto(full.Parameters.Parameters, cpu);
        var tokens = cpu.Allocate(new Shape(1, 12), DType.I32);
        cpu.CopyFromHost<int>(System.Text.Encoding.ASCII.GetBytes("Hello there!").Select(b => (int)b).ToArray(), tokens);
        NumericAssert.Close(TestTensors.ToDoubles(cpu, adapted.Forward(tokens)), TestTensors.ToDoubles(cpu, full.Forward(tokens)), 1e-5, "merged export against base + adapter");
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
}
