namespace Tessera.Training.Parallel;

/// <summary>
/// One communication unit over the parameter arena: a gradient bucket (stages 0-2) or a model segment
/// (stage 3). Its <see cref="Length"/> elements [Start, Start + Length) are split into
/// <c>shards</c> chunks of <see cref="Chunk"/> elements (the last ones may run past the unit and are padding);
/// rank r owns chunk r, which lives at <see cref="ShardStart"/> of its shard buffers.
/// </summary>
/// <param name="Index">Position in issue order.</param>
/// <param name="Start">First arena element.</param>
/// <param name="Length">Arena elements covered (a multiple of the arena alignment).</param>
/// <param name="Chunk">Elements per rank (a multiple of the arena alignment; Length when unsharded).</param>
/// <param name="ShardStart">Offset of this unit's chunk in the rank's shard buffers.</param>
public readonly record struct ShardUnit(int Index, long Start, long Length, long Chunk, long ShardStart)
{
    /// <summary>One past the last arena element.</summary>
    public long End => Start + Length;
}
