using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Cli;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Models.Adapters;

/// <summary>
/// A tiny base model and a PEFT adapter for it, written as files, and what <c>tessera export</c> makes of the two: the inputs of
/// the --adapter tests. The base has random weights of O(0.3) (norm weights near 1) and the byte vocabulary with a tokenizer and a context of 128 (room for a chat prompt), so
/// the commands can serve it; the adapter has rank 4, alpha 8, A as PEFT initializes it and B of O(0.3), so it moves the logits.
/// </summary>
/// <param name="Base">The base model's Hugging Face directory.</param>
/// <param name="Adapter">The adapter's directory (adapter_config.json, adapter_model.safetensors).</param>
/// <param name="Config">The base's configuration.</param>
internal sealed record AdapterCase(string Base, string Adapter, TransformerConfig Config)
{
    /// <summary>Every target of each family: Llama's q, k, v (parts of the fused QKV), o and the MLP; GPT-2's Conv1D layers; Phi-3's fused modules (PEFT's names).</summary>
    public static string[] AllTargets(string preset) => preset.StartsWith("gpt2", StringComparison.Ordinal)
        ? ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
        : preset.StartsWith("phi", StringComparison.Ordinal) ? ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        : ["q", "k", "v", "o", "gate", "up", "down"];

    /// <summary>Writes the base of <paramref name="preset"/> (byte vocabulary) and an adapter on <paramref name="targets"/> under <paramref name="root"/>; the seed goes to the test output.</summary>
    public static AdapterCase Write(string root, string preset, string[] targets, int seed)
    {
        TestContext.Current.TestOutputHelper?.WriteLine($"{preset}: weights and adapter seed {seed}");
        var cpu = new CpuBackend(2);
        var config = ModelPresets.Get(preset) with { VocabSize = 256, MaxSequenceLength = 128 };
        var plain = new Tessera.Models.Transformer(config, cpu, DType.F32);
        LayerCheck.Randomize(cpu, plain.Parameters, new Random(seed));
        string baseDir = Path.Combine(root, preset + "-base");
        HuggingFaceExport.Write(baseDir, plain, new HuggingFaceExportOptions { Tokenizer = new ByteTokenizer() });
        string adapter = Path.Combine(root, preset + "-adapter");
        WriteAdapter(adapter, config, targets, seed + 1, baseDir);
        return new AdapterCase(baseDir, adapter, config);
    }

    /// <summary>An adapter of rank <paramref name="rank"/> (default 4), alpha 2·rank on <paramref name="targets"/> for a model of <paramref name="config"/>, B drawn from <paramref name="seed"/>.</summary>
    public static void WriteAdapter(string directory, TransformerConfig config, string[] targets, int seed, string? baseModel = null, int rank = 4)
    {
        var cpu = new CpuBackend(1);
        var lora = new LoraOptions { Rank = rank, Alpha = 2 * rank, Seed = seed, Targets = LoraTargets.Parse(config, targets) };
        var adapters = new Tessera.Models.Transformer(config, cpu, DType.F32, ArenaStorage.Deferred, lora: lora).Adapters!;
        var rng = new Random(seed);
        foreach (var p in adapters.Layout.Parameters)
            if (p.Name.EndsWith(".lora_B", StringComparison.Ordinal)) adapters.Write(p, TestTensors.Normal(rng, p.NumElements, 0.3));
        PeftAdapter.Save(directory, adapters, baseModel);
    }

    /// <summary>Runs the real <c>tessera export</c> on the base and the adapter; returns the merged directory.</summary>
    public string Export(string output)
    {
        var (code, stdout, stderr) = CliProcess.Run("export", "--model", Base, "--adapter", Adapter, "--out", output);
        Assert.True(code == 0, stdout + stderr);
        return output;
    }

    /// <summary>The logits (2, 12, vocabulary) of <paramref name="model"/> for <paramref name="tokens"/> (2 x 12), in F64.</summary>
    public static double[] Logits(Tessera.Models.Transformer model, int[] tokens)
    {
        var backend = model.Backend;
        var logits = model.Forward(backend.FromArray(tokens, 2, 12), 0);
        var values = TestTensors.ToDoubles(backend, backend.Contiguous(logits.Slice(2, 0, model.Config.VocabSize)));
        model.ReleaseActivations(0);
        return values;
    }
}
