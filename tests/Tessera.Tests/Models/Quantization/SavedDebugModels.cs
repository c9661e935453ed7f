using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Quantization;

/// <summary>
/// The quantized-model tests' common ground on the CPU: debug models with O(0.3) random weights (seed logged) saved as Hugging
/// Face directories under a temporary folder, their logits, and fixed random tokens.
/// </summary>
internal sealed class SavedDebugModels(CpuBackend cpu, string prefix) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory(prefix).FullName;

    /// <summary>The temporary folder the models are saved under (deleted with this object).</summary>
    public string Folder => _dir;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// A model of <paramref name="preset"/> in <paramref name="dtype"/>, optionally reconfigured, its weights drawn from
    /// <paramref name="seed"/> (or the clock), saved; its directory and the model.
    /// </summary>
    public (string Directory, Model Original) Save(string preset, DType dtype, Func<TransformerConfig, TransformerConfig>? change = null, int? seed = null)
    {
        var config = ModelPresets.Get(preset);
        if (change is not null) config = change(config);
        var model = new Model(config, cpu, dtype);
        LayerCheck.Randomize(cpu, model.Parameters, TestRandom.Create(seed));
        var dir = Path.Combine(_dir, preset + "-" + dtype);
        HuggingFaceExport.Write(dir, model);
        return (dir, model);
    }

    /// <summary>The model's logits for <paramref name="tokens"/> (B, T), the vocabulary's columns only, as doubles.</summary>
    public double[] Logits(Model model, Tensor tokens)
    {
        var logits = model.Forward(tokens, 0);
        model.ReleaseActivations(0);
        return TestTensors.ToDoubles(cpu, cpu.Contiguous(logits.Slice(2, 0, model.Config.VocabSize)));
    }

    /// <summary>(B, T) token ids drawn with a fixed seed from the vocabulary of <paramref name="config"/>.</summary>
    public Tensor Tokens(TransformerConfig config, int b, int t)
    {
        var rng = new Random(3);
        return cpu.FromArray(Enumerable.Range(0, b * t).Select(_ => rng.Next(config.VocabSize)).ToArray(), b, t);
    }
}
