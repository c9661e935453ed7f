using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Adapters;

/// <summary>
/// Hugging Face's peft loads the adapters Tessera writes: for a Llama, a GPT-2, a Mixtral, a Qwen2-MoE and a Phi-3 base directory
/// (random weights, Tessera's export) and an adapter on every target of the family (the experts' and the shared expert's products
/// included; Phi-3: PEFT's fused qkv_proj and gate_up_proj, o_proj, down_proj), <c>PeftModel.from_pretrained</c> gives Tessera's
/// logits (base + unmerged adapter) within 1e-4 in F32 (scripts/golden/check_peft.py; a mixture-of-experts case is skipped,
/// saying so, where transformers builds no per-expert modules). Needs python3 with torch, transformers and peft (the GPU
/// machine); skipped, with the reason, elsewhere.
/// </summary>
public sealed class PeftInteropTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-peft-interop-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void PeftLoadsTesserasAdaptersAndGivesTheSameLogits()
    {
        // The cases are written everywhere (the Tessera half runs on every machine); only python's half skips.
        var cases = new List<string>();
        int seed = 40;
        foreach (var (preset, targets) in new[] { ("llama-debug", new[] { "q", "k", "v", "o", "gate", "up", "down" }), ("gpt2-debug", new[] { "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj" }),
            // Mixture of experts: PEFT's usual Mixtral targets (each expert's w1, w2, w3); Qwen2-MoE's gate_proj, up_proj,
            // down_proj, which PEFT matches in every expert and the shared expert alike.
            ("mixtral-debug", new[] { "q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3" }),
            ("qwen2-moe-debug", new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" }),
            ("phi3-debug", new[] { "qkv_proj", "o_proj", "gate_up_proj", "down_proj" }) })
            cases.Add(WriteCase(preset, targets, seed += 10));
        string? missing = PythonProcess.Missing("torch", "transformers", "safetensors", "peft");
        if (missing is not null) Assert.Skip($"peft round trip not run: {missing}");
        var (code, output) = PythonProcess.Run([Path.Combine(AppContext.BaseDirectory, "Golden", "check_peft.py"), .. cases]);
        TestContext.Current.TestOutputHelper?.WriteLine(output);
        Assert.True(code == 0, "peft disagrees with a Tessera adapter:\n" + output);
    }

    /// <summary>
    /// A case directory: base/ (random weights of O(0.3), exported), adapter/ (rank 4, alpha 8, A as PEFT initializes it, B of
    /// O(0.3) so the adapter moves the logits), and Tessera's logits of base + unmerged adapter for two rows of 12 tokens.
    /// </summary>
    private string WriteCase(string preset, string[] targets, int seed)
    {
        var cpu = new CpuBackend(2);
        var config = ModelPresets.Get(preset);
        var dir = Path.Combine(_dir, preset);
        var plain = new Model(config, cpu, DType.F32);
        LayerCheck.Randomize(cpu, plain.Parameters, new Random(seed));
        HuggingFaceExport.Write(Path.Combine(dir, "base"), plain);

        using var hf = HuggingFaceModelDirectory.Open(Path.Combine(dir, "base"));
        var lora = new LoraOptions { Rank = 4, Alpha = 8, Seed = seed, Targets = LoraTargets.Parse(hf.Config, targets) };
        var model = new Model(hf.Config, cpu, DType.F32, ArenaStorage.Frozen, lora: lora);
        hf.LoadInto(model.Parameters.Parameters, cpu);
        var rng = new Random(seed + 1);
        foreach (var p in model.Adapters!.Layout.Parameters)
            if (p.Name.EndsWith(".lora_B", StringComparison.Ordinal)) model.Adapters.Write(p, TestTensors.Normal(rng, p.NumElements, 0.3));
        PeftAdapter.Save(Path.Combine(dir, "adapter"), model.Adapters, Path.Combine(dir, "base"));

        var tokens = Enumerable.Range(0, 2 * 12).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var values = Logits(model, tokens);
        // The adapter moves the logits well past the 1e-4 tolerance (the script requires 1e-2), so a peft that dropped it fails.
        var baseLogits = Logits(plain, tokens);
        Assert.True(NumericAssert.MaxRelativeError(values, baseLogits) > 5e-2, $"{preset}: the adapter hardly changes the logits");
        var writer = new SafetensorsWriter();
        writer.Add("tokens", DType.I32, new Shape(2, 12), System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens.AsSpan()).ToArray());
        writer.Add("logits", new Shape(2, 12, config.VocabSize), Array.ConvertAll(values, x => (float)x));
        writer.Write(Path.Combine(dir, "tessera_reference.safetensors"));
        return dir;
    }

    private static double[] Logits(Model model, int[] tokens)
    {
        var cpu = model.Backend;
        var logits = model.Forward(cpu.FromArray(tokens, 2, 12), 0);
        var values = TestTensors.ToDoubles(cpu, cpu.Contiguous(logits.Slice(2, 0, model.Config.VocabSize)));
        model.ReleaseActivations(0);
        return values;
    }
}
