namespace Tessera.Nn;

/// <summary>Whether a model allocates its parameters when built.</summary>
public enum ArenaStorage
{
    /// <summary>A full <see cref="ParameterArena"/> (values, gradients, and F32 masters for BF16/F16) attached when the model is built. The default.</summary>
    Full,

    /// <summary>
    /// The parameter layout only (shapes, placements, offsets; no buffer): ZeRO-3's sharded construction, where the
    /// fully sharded strategy attaches its shards and the trainer writes the weights into them.
    /// </summary>
    Deferred,

    /// <summary>
    /// Values only, frozen (a base model fine-tuned through adapters, see <c>LoraAdapters</c>): no gradient buffer and no F32
    /// master, so a BF16 model is held once, in BF16; layers compute no weight gradient for these parameters.
    /// </summary>
    Frozen,
}
