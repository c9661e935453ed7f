using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Nn.Adapters;

/// <summary>
/// LoRA over an int8 base (<see cref="PretrainedModel.Quantized"/> with LoRA options): the loss and every adapter gradient equal
/// those of LoRA over the same base in floating point holding what the int8 weights stand for (F64, 1e-10: the same sums in
/// another order), for Llama (separate products) and GPT-2 (the fused QKV, the GELU MLP, a tied int8 head); the base has no
/// gradients and stays as it was.
/// </summary>
public sealed class QuantizedBaseLoraTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-qlora-").FullName;
    private readonly CpuBackend _cpu = new(1);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("llama-debug", new[] { "q", "k", "v", "o", "gate", "up", "down" })]
    [InlineData("gpt2-debug", new[] { "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj" })]
    public void AdapterGradientsOverAnInt8BaseAreThoseOverItsDequantizedWeights(string preset, string[] targets)
    {
        var config = ModelPresets.Get(preset);
        var original = new Transformer(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, original.Parameters, TestRandom.Create());
        HuggingFaceExport.Write(_dir, original);
        var lora = new LoraOptions { Rank = 3, Alpha = 6, Seed = 5, Targets = LoraTargets.Parse(config, targets) };

        using var hf = HuggingFaceModelDirectory.Open(_dir);
        var quantized = PretrainedModel.Quantized(config, _cpu, DType.F64, lora: lora);
        hf.LoadInto(quantized.Layout.Parameters, _cpu);
        var reference = new Transformer(config, _cpu, DType.F64, ArenaStorage.Frozen, lora: lora);
        foreach (var p in quantized.Layout.Parameters)
        {
            var target = reference.Parameters[p.Name].Value;
            if (p.Quantized is { } q)
            {
                var values = _cpu.ToArray<sbyte>(q.Values);
                var scales = _cpu.ToArray<float>(q.Scales);
                TestTensors.Write(_cpu, target, [.. values.Select((v, i) => (double)scales[i / q.Columns] * v)]);
            }
            else _cpu.Copy(p.Value, target);
        }
        // The same adapters (B nonzero, so every path carries a gradient).
        var rng = new Random(7);
        foreach (var p in quantized.Adapters!.Layout.Parameters)
        {
            var values = p.Name.EndsWith(".lora_B", StringComparison.Ordinal) ? TestTensors.Normal(rng, p.NumElements, 0.3) : quantized.Adapters.Read(p);
            quantized.Adapters.Write(p, values);
            reference.Adapters!.Write(reference.Adapters.Layout[p.Name], values);
        }
        Assert.Same(quantized.Adapters.Layout, quantized.TrainableLayout);

        var tokens = _cpu.FromArray(Enumerable.Range(0, 12).Select(i => (i * 7 + 3) % config.VocabSize).ToArray(), 2, 6);
        var targetsIds = _cpu.FromArray(Enumerable.Range(0, 12).Select(i => (i * 5 + 1) % config.VocabSize).ToArray(), 2, 6);
        double Run(Transformer m)
        {
            m.Adapters!.Arena.ZeroGrad();
            var losses = m.Loss(tokens, targetsIds, 0, lossScale: 1.0 / 12);
            m.Backward(0);
            return TestTensors.ToDoubles(_cpu, losses).Sum();
        }
        Assert.Equal(Run(reference), Run(quantized), 1e-10);
        foreach (var p in quantized.Adapters.Layout.Parameters)
            NumericAssert.Close(TestTensors.ToDoubles(_cpu, reference.Adapters!.Layout[p.Name].Grad), TestTensors.ToDoubles(_cpu, p.Grad), 1e-10, p.Name);
        Assert.All(quantized.Layout.Parameters, p => Assert.False(p.RequiresGradient));
    }
}
