namespace Tessera.Models;

/// <summary>
/// Callbacks a <see cref="Transformer"/> raises around each of its units (<see cref="Tessera.Nn.ParameterLayout.Units"/>:
/// 0 the embeddings, i + 1 block i, the last the final norm and head) during its training passes, for data-parallel
/// gradient bucketing and ZeRO-3 gathering. A unit's parameters are one contiguous arena range. Inference
/// (ForwardWithCache) raises nothing.
/// </summary>
public interface ITransformerPassHooks
{
    /// <summary>Before the forward of unit <paramref name="segment"/> reads its parameters.</summary>
    void BeforeForward(int segment);

    /// <summary>After the forward of unit <paramref name="segment"/>.</summary>
    void AfterForward(int segment);

    /// <summary>
    /// Before the backward of unit <paramref name="segment"/> reads its parameters or writes their gradients. For the head
    /// unit it may come twice per micro-batch: from the loss, whose fused head takes the head's weight gradient as it goes
    /// (<see cref="Transformer.LossChunkRows"/>), and again from the backward pass; implementations must be idempotent.
    /// </summary>
    void BeforeBackward(int segment);

    /// <summary>
    /// After the backward of unit <paramref name="segment"/>: the gradients of every parameter at or after the unit's
    /// first arena offset are final for this micro-batch (a tied LM head's contribution to the token embedding arrives
    /// before unit 0 finishes).
    /// </summary>
    void AfterBackward(int segment);
}
