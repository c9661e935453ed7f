using Tessera.Tensors;

namespace Tessera.Training.Pipeline;

/// <summary>
/// What a <see cref="PipelineExecutor"/> runs on one rank: the forward and backward of the rank's model chunks, one micro-batch
/// at a time, and the buffers its messages land in. The executor decides when (the schedule) and moves the messages; the stage
/// computes. A slot is the executor's name for the memory of one (chunk, micro-batch) in flight, reused once free: an activation
/// slot holds what its forward saves for its backward, so at most as many exist as the schedule keeps in flight; a message slot
/// holds its received input and its gradient.
/// </summary>
public interface IPipelineStage
{
    /// <summary>Where the message buffers live.</summary>
    IBackend Backend { get; }

    /// <summary>
    /// The buffer of message slot <paramref name="slot"/> that receives an input activation (<paramref name="gradient"/> false) or holds
    /// an output gradient that the backward turns into the input gradient in place (true): every message has the same shape and
    /// dtype, known ahead (this rank's rows of the micro-batch's residual stream), contiguous, and valid while the slot is.
    /// </summary>
    Tensor MessageBuffer(int slot, bool gradient);

    /// <summary>
    /// The forward of model chunk <paramref name="chunk"/> for micro-batch <paramref name="microBatch"/> in activation slot
    /// <paramref name="slot"/>: from <paramref name="input"/> (the received activation; null on the first virtual stage, which
    /// reads its tokens), returning the activation to send to the next virtual stage, valid until the slot is reused (null on the
    /// last virtual stage, whose output is the loss).
    /// </summary>
    Tensor? Forward(int chunk, int microBatch, int slot, Tensor? input);

    /// <summary>
    /// The backward of chunk <paramref name="chunk"/> for micro-batch <paramref name="microBatch"/> in activation slot <paramref name="slot"/>,
    /// in place on <paramref name="gradient"/> (the received output gradient, or the slot's gradient buffer on the last virtual
    /// stage; afterwards the gradient of the chunk's input). <paramref name="lastOfChunk"/>: whether this is the chunk's last
    /// backward of the step, after which its parameter gradients are complete.
    /// </summary>
    void Backward(int chunk, int microBatch, int slot, Tensor gradient, bool lastOfChunk);

    /// <summary>Forgets what activation slot <paramref name="slot"/> saved (a forward-only pass, whose activations no backward needs).</summary>
    void Release(int slot);
}
