using Tessera.Models.Safetensors;
using Tessera.Tensors;

namespace Tessera.Tests.Models.HuggingFace;

/// <summary>
/// The tiny random checkpoints the model-family tests write as Hugging Face saves them: tensors by Hugging Face name
/// (shape, F32 values) drawn from a seeded <see cref="Random"/>, and a directory of config.json plus model.safetensors.
/// </summary>
internal static class TinyHuggingFaceCheckpoint
{
    /// <summary>
    /// Adds tensor <paramref name="name"/> of <paramref name="shape"/> to <paramref name="weights"/>, its values drawn in
    /// row-major order: a norm weight 1 + U(-0.3, 0.3), anything else U(-0.3, 0.3) (F32).
    /// </summary>
    public static void AddRandom(Dictionary<string, (int[] Shape, float[] Data)> weights, Random rng, string name, bool norm, params int[] shape)
    {
        int n = shape.Aggregate(1, (a, b) => a * b);
        weights[name] = (shape, Enumerable.Range(0, n).Select(_ => (float)(norm ? 1 + 0.3 * (rng.NextDouble() * 2 - 1) : 0.3 * (rng.NextDouble() * 2 - 1))).ToArray());
    }

    /// <summary>Writes <paramref name="dir"/>/config.json and <paramref name="dir"/>/model.safetensors (the tensors in the
    /// dictionary's order); returns <paramref name="dir"/>.</summary>
    public static string Write(string dir, string configJson, Dictionary<string, (int[] Shape, float[] Data)> weights)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), configJson);
        var writer = new SafetensorsWriter();
        foreach (var (n, (shape, data)) in weights) writer.Add(n, new Shape(shape), data);
        writer.Write(Path.Combine(dir, "model.safetensors"));
        return dir;
    }
}
