namespace Tessera.Nn;

/// <summary>How a BF16 <see cref="ParameterArena"/> keeps the F32 masters that the optimizer updates (mixed precision).</summary>
public enum MasterWeights
{
    /// <summary>
    /// An F32 master buffer beside the 16-bit values (llm.c's design): 4 bytes per parameter on top of the 2-byte value,
    /// the value the master rounded to nearest even. The default, and the only choice for F16 arenas.
    /// </summary>
    Separate,

    /// <summary>
    /// BF16 only: the value the layers read is the master's high half and a 16-bit low-word plane holds the rest, 2 bytes
    /// per parameter instead of 4 (<see cref="Tessera.Tensors.IBackend.SplitMasters"/>). The master is exact (joined inside
    /// the optimizer, bitwise the separate-master AdamW trajectory); the value is the master rounded half away from zero,
    /// which differs from round-to-nearest-even only when the low half is exactly 0x8000 (a tie). Data parallelism and ZeRO 1-3
    /// keep it (ZeRO-3 as a low-word shard); the offloaded optimizer refuses it.
    /// </summary>
    Split,
}
