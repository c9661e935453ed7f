namespace Tessera.Models;

/// <summary>
/// Callbacks a <see cref="Transformer"/> raises around each segment of its training passes, for
/// data-parallel gradient bucketing and ZeRO-3 parameter gathering. Segment 0 is the embeddings,
/// segment i + 1 is block i, segment Layers + 1 is the final norm and the LM head; a segment's
/// parameters are one contiguous arena range (declaration order). Inference (ForwardWithCache)
/// raises nothing.
/// </summary>
public interface ITransformerPassHooks
{
    /// <summary>Before the forward of <paramref name="segment"/> reads its parameters.</summary>
    void BeforeForward(int segment);

    /// <summary>After the forward of <paramref name="segment"/>.</summary>
    void AfterForward(int segment);

    /// <summary>Before the backward of <paramref name="segment"/> reads its parameters.</summary>
    void BeforeBackward(int segment);

    /// <summary>
    /// After the backward of <paramref name="segment"/>: the gradients of every parameter at or after the
    /// segment's first arena offset are final for this micro-batch (a tied LM head's contribution to the
    /// token embedding arrives before segment 0 finishes).
    /// </summary>
    void AfterBackward(int segment);
}
