using System.Text.Json.Serialization;

namespace Tessera.Training.Parallel;

/// <summary>zero.json of a sharded checkpoint: who saved it and which shard files it has.</summary>
/// <param name="WorldSize">Ranks that saved it.</param>
/// <param name="Stage">ZeRO stage of the saving run (0-3); loading does not depend on it.</param>
/// <param name="Files">Shard files, index = saving rank.</param>
public sealed record ZeroCheckpointLayout(
    [property: JsonPropertyName("world_size")] int WorldSize,
    [property: JsonPropertyName("stage")] int Stage,
    [property: JsonPropertyName("files")] string[] Files);
