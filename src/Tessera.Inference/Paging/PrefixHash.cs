using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Tessera.Inference.Paging;

/// <summary>
/// The identity of a full block's keys and values: a 128-bit digest (the first half of SHA-256) of the previous block's
/// hash and this block's token ids, so equal hashes mean equal tokens at every position up to the block's end (vLLM's
/// prefix-caching chain). A cryptographic digest makes an accidental collision, which would serve another prompt's keys,
/// negligible; its cost (one digest of 16 + 4·BlockSize bytes per block) is small beside the block's forward pass.
/// </summary>
public static class PrefixHash
{
    /// <summary>
    /// The chain's seed (the "previous" hash of a sequence's first block) for a sequence served with LoRA adapter
    /// <paramref name="adapter"/> (0: the base, whose seed is 0 as before). The same tokens give other keys and values under
    /// another adapter, so each adapter's blocks form their own chains and are never shared with another's or the base's.
    /// <paramref name="load"/> tells apart the adapters a slot held over time (adapters loaded and unloaded at run time): the
    /// engine numbers each load, so a re-used slot, or a name loaded again with other weights, never meets an earlier load's blocks.
    /// </summary>
    public static UInt128 SeedOf(int adapter, long load) =>
        adapter == 0 ? UInt128.Zero : Of(UInt128.MaxValue, [adapter, unchecked((int)load), (int)(load >> 32)]);

    /// <summary>Hash of the block holding <paramref name="tokens"/> after the block hashed <paramref name="previous"/> (0 for the first).</summary>
    public static UInt128 Of(UInt128 previous, ReadOnlySpan<int> tokens)
    {
        Span<byte> input = tokens.Length <= 256 ? stackalloc byte[16 + 4 * tokens.Length] : new byte[16 + 4 * tokens.Length];
        BinaryPrimitives.WriteUInt128LittleEndian(input, previous);
        for (int i = 0; i < tokens.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(input[(16 + 4 * i)..], tokens[i]);
        Span<byte> digest = stackalloc byte[32];
        SHA256.HashData(input, digest);
        return BinaryPrimitives.ReadUInt128LittleEndian(digest);
    }
}
