using System.Text.Json.Serialization;

namespace Tessera.Training.Parallel;

/// <summary>
/// parallel.json of a sharded checkpoint: the layout that saved it (world, tensor-, data- and pipeline-parallel sizes, ZeRO stage),
/// its shard files, and every parameter's global shape and placement, so that the pieces can be put back into whole
/// tensors and dealt out again to any other layout.
/// </summary>
/// <param name="WorldSize">Ranks that saved it (tp x dp x pp).</param>
/// <param name="TensorParallel">Tensor-parallel size of the saving run.</param>
/// <param name="DataParallel">Data-parallel size of the saving run.</param>
/// <param name="Stage">ZeRO stage of the saving run (0-3); loading does not depend on it.</param>
/// <param name="Files">Shard files, index = saving world rank (tp fastest, then dp, then pp).</param>
/// <param name="Parameters">Per canonical parameter name (every parameter of the whole model): its global shape and placement.</param>
/// <param name="PipelineParallel">Pipeline stages of the saving run (1 when absent: checkpoints saved before pipeline parallelism).</param>
public sealed record ParallelCheckpointLayout(
    [property: JsonPropertyName("world_size")] int WorldSize,
    [property: JsonPropertyName("tp")] int TensorParallel,
    [property: JsonPropertyName("dp")] int DataParallel,
    [property: JsonPropertyName("stage")] int Stage,
    [property: JsonPropertyName("files")] string[] Files,
    [property: JsonPropertyName("parameters")] Dictionary<string, SavedPlacement> Parameters,
    [property: JsonPropertyName("pp")] int PipelineParallel = 1);
