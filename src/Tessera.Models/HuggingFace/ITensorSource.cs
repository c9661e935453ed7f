using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>Named tensors that can be listed, measured and read one at a time (a dictionary, safetensors shards).</summary>
internal interface ITensorSource
{
    /// <summary>What to call the source as a whole in messages (a file or directory).</summary>
    string Description { get; }

    /// <summary>Every tensor name.</summary>
    IEnumerable<string> Names { get; }

    /// <summary>The shape of <paramref name="name"/>, or null when absent.</summary>
    Shape? ShapeOf(string name);

    /// <summary>Where <paramref name="name"/> lives, for messages.</summary>
    string FileOf(string name);

    /// <summary>The elements of <paramref name="name"/> as F32, row-major.</summary>
    float[] Read(string name);

    /// <summary>
    /// The element runs <paramref name="runs"/> (start, length, in row-major elements) of <paramref name="name"/> as F32,
    /// one after another, reading nothing else (a tensor-parallel rank's slice, <see cref="TensorSlice.Runs"/>).
    /// </summary>
    float[] Read(string name, IReadOnlyList<(long Start, long Length)> runs);
}
