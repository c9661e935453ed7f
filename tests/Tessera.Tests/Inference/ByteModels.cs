using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tests.Nn;

namespace Tessera.Tests.Inference;

/// <summary>Random debug models over the byte vocabulary (256 ids, the ByteTokenizer's), as the serving and generation tests build them.</summary>
internal static class ByteModels
{
    /// <summary>
    /// Preset <paramref name="preset"/> with 256 token ids, <paramref name="context"/> positions and, when positive,
    /// <paramref name="layers"/> blocks; weights of O(0.3) from <see cref="LayerCheck.Randomize"/> with <paramref name="seed"/>
    /// (logits spread enough that no two candidates are near a tie).
    /// </summary>
    public static Transformer Random(IBackend backend, string preset, int seed, int context, DType dtype = DType.F64, int layers = 0)
    {
        var config = ModelPresets.Get(preset);
        config = config with { VocabSize = 256, MaxSequenceLength = context, Layers = layers > 0 ? layers : config.Layers };
        var model = new Transformer(config, backend, dtype);
        LayerCheck.Randomize(backend, model.Parameters, new System.Random(seed));
        return model;
    }
}
