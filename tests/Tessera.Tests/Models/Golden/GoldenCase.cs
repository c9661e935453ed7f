using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Tensors;

namespace Tessera.Tests.Models.Golden;

/// <summary>
/// One golden model folder written by scripts/golden/make_golden.py from PyTorch + transformers:
/// config.json and model.safetensors (F32, Hugging Face names) and golden_{f32,f64}.safetensors
/// (inputs, logits, loss, gradients by HF name, 10 AdamW losses, greedy tokens).
/// </summary>
internal sealed class GoldenCase
{
    public GoldenCase(string name)
    {
        Directory = Path.Combine(AppContext.BaseDirectory, "Golden", name);
        if (!File.Exists(Path.Combine(Directory, "config.json")))
            Xunit.Assert.Skip($"golden files for {name} not generated yet: scripts/golden/make_golden.py --only {name} writes them on a machine with torch and transformers");
        Config = HuggingFaceConfig.Load(Path.Combine(Directory, "config.json"));
    }

    public string Directory { get; }

    public TransformerConfig Config { get; }

    public SafetensorsFile Open(DType dtype) =>
        SafetensorsFile.Open(Path.Combine(Directory, dtype == DType.F64 ? "golden_f64.safetensors" : "golden_f32.safetensors"));

    /// <summary>
    /// Maps a Hugging Face-named tensor set to canonical names exactly, in double precision: the map
    /// (transposes, row concatenation, padding) is a permutation of elements, so it is found by mapping
    /// tensors that hold their own element indices (exact in float up to 2^24) and then applied to doubles.
    /// </summary>
    public Dictionary<string, double[]> ToCanonical(IReadOnlyDictionary<string, (Shape Shape, double[] Data)> hf)
    {
        var map = HuggingFaceWeightMap.For(Config);
        long next = 1;   // 0 marks padding rows that no source fills
        var index = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        var sources = new List<double>() { 0 };
        foreach (var (name, (shape, data)) in hf)
        {
            var ids = new float[data.Length];
            for (int i = 0; i < data.Length; i++) { ids[i] = next++; sources.Add(data[i]); }
            if (next > 1 << 24) throw new InvalidOperationException("golden model too large for exact index mapping");
            index[name] = new HostTensor(shape, ids);
        }
        var canonical = map.ToCanonical(index, "golden");
        return canonical.ToDictionary(kv => kv.Key, kv => Array.ConvertAll(kv.Value.Data, f => sources[(int)f]), StringComparer.Ordinal);
    }
}
