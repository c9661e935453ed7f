using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>An in-memory dictionary of host tensors seen as a <see cref="ITensorSource"/>.</summary>
internal sealed class DictionaryTensorSource(IReadOnlyDictionary<string, HostTensor> tensors, string description) : ITensorSource
{
    public string Description => description;
    public IEnumerable<string> Names => tensors.Keys;
    public Shape? ShapeOf(string name) => tensors.TryGetValue(name, out var t) ? t.Shape : null;
    public string FileOf(string name) => description;
    public float[] Read(string name) => tensors[name].Validate().Data;
}
