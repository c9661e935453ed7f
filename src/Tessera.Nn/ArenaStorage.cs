namespace Tessera.Nn;

/// <summary>How a <see cref="ParameterArena"/> is materialized when its model is built.</summary>
public enum ArenaStorage
{
    /// <summary>Full-size value and gradient buffers (and F32 masters for BF16/F16) on the backend: <see cref="ParameterArena.Build"/>. The default.</summary>
    Full,

    /// <summary>
    /// Declared only (shapes and offsets, no buffer: <see cref="ParameterArena.BuildDeferred"/>), for ZeRO-3's sharded
    /// construction; the data-parallel trainer materializes the rank's shards and writes the weights into them.
    /// </summary>
    Deferred,
}
