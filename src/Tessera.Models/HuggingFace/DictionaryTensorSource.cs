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

    public float[] Read(string name, IReadOnlyList<(long Start, long Length)> runs)
    {
        var data = Read(name);
        var result = new float[runs.Sum(r => r.Length)];
        long at = 0;
        foreach (var (start, length) in runs)
        {
            Array.Copy(data, start, result, at, length);
            at += length;
        }
        return result;
    }
}
