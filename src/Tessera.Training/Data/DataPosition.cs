namespace Tessera.Training.Data;

/// <summary>Where a <see cref="TokenDataLoader"/> reads next: a shard index and a token offset in it.</summary>
/// <param name="Shard">Index into the loader's shard list.</param>
/// <param name="Offset">Token offset of the next global batch within that shard.</param>
/// <param name="Epoch">How many times the loader has wrapped around all shards.</param>
public readonly record struct DataPosition(int Shard, long Offset, int Epoch);
