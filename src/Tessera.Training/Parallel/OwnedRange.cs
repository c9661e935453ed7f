namespace Tessera.Training.Parallel;

/// <summary>
/// A contiguous part of the arena this rank updates: [ArenaOffset, ArenaOffset + Length) of the arena,
/// stored at <see cref="ShardOffset"/> of the rank's shard buffers (moments, gradient shard, offloaded masters).
/// </summary>
/// <param name="Unit">Index of the unit it belongs to.</param>
/// <param name="ArenaOffset">First arena element.</param>
/// <param name="Length">Elements.</param>
/// <param name="ShardOffset">Offset in the shard buffers.</param>
/// <param name="WeightDecay">Whether AdamW decays these elements (one decay setting per range).</param>
public readonly record struct OwnedRange(int Unit, long ArenaOffset, long Length, long ShardOffset, bool WeightDecay);
