namespace Tessera.Models;

/// <summary>
/// One kind of buffer a rank keeps for a micro-batch between its forward and its backward (<see cref="ActivationMemory"/>).
/// </summary>
/// <param name="Name">The activation's key in the store, its role within a block ("attn.qkv.out") or its name outside one.</param>
/// <param name="Shape">Its shape in words, e.g. "(N, (H/t + 2K/t) D)", with N the micro-batch's tokens and R this rank's rows.</param>
/// <param name="Bytes">Bytes of one such buffer.</param>
/// <param name="Count">How many the micro-batch holds: the blocks for a per-block item, else 1.</param>
public sealed record ActivationMemoryItem(string Name, string Shape, long Bytes, int Count)
{
    /// <summary>Bytes of all of them.</summary>
    public long TotalBytes => Bytes * Count;
}
