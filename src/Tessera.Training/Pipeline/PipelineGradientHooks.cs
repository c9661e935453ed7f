using Tessera.Models;

namespace Tessera.Training.Pipeline;

/// <summary>
/// Pass hooks around the data-parallel strategy's (and the tensor-parallel partial sums') for a pipeline stage: those reduce a
/// unit's gradient in its after-backward hook on the step's last micro-batch, but a pipeline runs the backwards of its chunks
/// interleaved, so a unit's gradient is complete only after its own chunk's last backward of the step. This passes the
/// after-backward hooks through only during those backwards (<see cref="ReduceNow"/>), so each gradient bucket is reduced once,
/// complete, and as early as it can be: a later chunk's buckets while the earlier chunks still compute.
/// </summary>
internal sealed class PipelineGradientHooks(ITransformerPassHooks? inner) : ITransformerPassHooks
{
    /// <summary>Whether the backward running now is its chunk's last of the step.</summary>
    public bool ReduceNow { get; set; }

    public void BeforeForward(int segment) => inner?.BeforeForward(segment);

    public void AfterForward(int segment) => inner?.AfterForward(segment);

    public void BeforeBackward(int segment) => inner?.BeforeBackward(segment);

    public void AfterBackward(int segment)
    {
        if (ReduceNow) inner?.AfterBackward(segment);
    }
}
