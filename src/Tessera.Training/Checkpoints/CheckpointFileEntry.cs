using System.Text.Json.Serialization;

namespace Tessera.Training.Checkpoints;

/// <summary>Size and SHA-256 (lower-case hex) of one checkpoint file.</summary>
public sealed record CheckpointFileEntry(
    [property: JsonPropertyName("bytes")] long Bytes,
    [property: JsonPropertyName("sha256")] string Sha256);
