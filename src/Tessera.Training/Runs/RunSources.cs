using System.Text.Json.Serialization;

namespace Tessera.Training.Runs;

/// <summary>
/// run.json of a run directory: where the run's data and model came from, so that a resume needs only the directory.
/// Paths are absolute (a resume may start from another working directory).
/// </summary>
/// <param name="Data">Training shards (a path or a glob in the file name); null: the embedded corpus in data/.</param>
/// <param name="ValidationData">Validation shards, or null.</param>
/// <param name="Model">The preset name or the fine-tuned Hugging Face directory.</param>
/// <param name="Tokenizer">"byte" or a tokenizer directory.</param>
public sealed record RunSources(
    [property: JsonPropertyName("data")] string? Data,
    [property: JsonPropertyName("val_data")] string? ValidationData,
    [property: JsonPropertyName("model")] string Model,
    [property: JsonPropertyName("tokenizer")] string Tokenizer);
