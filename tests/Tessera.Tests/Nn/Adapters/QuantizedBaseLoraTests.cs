using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Nn.Adapters;

/// <summary>
/// LoRA over an int8 or int4 base (<see cref="PretrainedModel.Quantized"/> with LoRA options; int4 is QLoRA's arrangement:
/// 4-bit groups, 16-bit adapters): the loss and every adapter gradient equal those of LoRA over the same base in floating point
/// holding what the quantized weights stand for (F64, 1e-10: the same sums in another order), for Llama (separate products)
/// and GPT-2 (the fused QKV, the GELU MLP, a tied int8 head; int4 keeps the token table and head in F64); the base has no
/// gradients and stays as it was.
/// </summary>
public sealed class QuantizedBaseLoraTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-qlora-").FullName;
    private readonly CpuBackend _cpu = new(1);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("llama-debug", new[] { "q", "k", "v", "o", "gate", "up", "down" }, WeightQuantization.Int8)]
    [InlineData("gpt2-debug", new[] { "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj" }, WeightQuantization.Int8)]
    [InlineData("llama-debug", new[] { "q", "k", "v", "o", "gate", "up", "down" }, WeightQuantization.Int4)]
    [InlineData("gpt2-debug", new[] { "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj" }, WeightQuantization.Int4)]
    public void AdapterGradientsOverAQuantizedBaseAreThoseOverItsDequantizedWeights(string preset, string[] targets, WeightQuantization quantization)
    {
        var config = ModelPresets.Get(preset);
        var original = new Transformer(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, original.Parameters, TestRandom.Create());
        HuggingFaceExport.Write(_dir, original);
        var lora = new LoraOptions { Rank = 3, Alpha = 6, Seed = 5, Targets = LoraTargets.Parse(config, targets) };

        using var hf = HuggingFaceModelDirectory.Open(_dir);
        var quantized = PretrainedModel.Quantized(config, _cpu, DType.F64, lora: lora, quantization: quantization);
        hf.LoadInto(quantized.Layout.Parameters, _cpu);
        var reference = new Transformer(config, _cpu, DType.F64, ArenaStorage.Frozen, lora: lora);
        int quantizedCount = 0;
        foreach (var p in quantized.Layout.Parameters)
        {
            var target = reference.Parameters[p.Name].Value;
            if (p.Quantized is { IsInt4: true } q4)
            {
                TestTensors.Write(_cpu, target, Int4Reference.StandsFor(q4, _cpu));
                quantizedCount++;
            }
            else if (p.Quantized is { } q)
            {
                var values = _cpu.ToArray<sbyte>(q.Values);
                var scales = _cpu.ToArray<float>(q.Scales);
                TestTensors.Write(_cpu, target, [.. values.Select((v, i) => (double)scales[i / q.Columns] * v)]);
                quantizedCount++;
            }
            else _cpu.Copy(p.Value, target);
        }
        Assert.True(quantizedCount >= 4 * config.Layers, $"{quantizedCount} {quantization} parameters");
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
