using Tessera.Models.HuggingFace;
using Tessera.Tensors;

namespace Tessera.Models;

/// <summary>Builds a <see cref="Transformer"/> from a Hugging Face model directory (or a Tessera checkpoint, which is one).</summary>
public static class PretrainedModel
{
    /// <summary>
    /// Reads config.json and the weights of <paramref name="directory"/> into a new model on <paramref name="backend"/>
    /// in <paramref name="dtype"/>. When <paramref name="expected"/> is given (a checkpoint's own configuration, e.g.
    /// with a padded vocabulary) the directory must describe the same architecture and the model takes that configuration.
    /// With <paramref name="tensorParallelism"/> the model is this rank's part of a tensor-parallel one, and each split
    /// parameter keeps its slice of the weights.
    /// </summary>
    public static Transformer Load(string directory, IBackend backend, DType dtype, TransformerConfig? expected = null,
        Tessera.Nn.Parallel.TensorParallelism? tensorParallelism = null)
    {
        using var hf = expected is null ? HuggingFaceModelDirectory.Open(directory) : HuggingFaceModelDirectory.Open(directory, expected);
        var model = new Transformer(hf.Config, backend, dtype, tensorParallelism: tensorParallelism);
        hf.LoadInto(model.Parameters.Parameters, backend);
        return model;
    }
}
