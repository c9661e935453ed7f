using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Speculation;

namespace Tessera.Inference.Serving;

/// <summary>How an <see cref="InferenceEngine"/> serves its model.</summary>
public sealed record EngineOptions
{
    /// <summary>The paged KV cache: block size and bytes; default 16-position blocks in 256 MiB.</summary>
    public PagedKvCacheOptions Cache { get; init; } = new();

    /// <summary>Batch size, tokens per step and queue length; default 64 sequences, 2048 tokens, 256 waiting requests.</summary>
    public SchedulerOptions Scheduler { get; init; } = new();

    /// <summary>Most positions (prompt + completion) of one sequence; default null: the model's context. A smaller value
    /// shrinks the block tables the device reads each step (vLLM's max_model_len).</summary>
    public int? MaxSequenceLength { get; init; }

    /// <summary>Whether decode steps are recorded and replayed per batch-size bucket where the backend can (CUDA graphs);
    /// default true.</summary>
    public bool RecordGraphs { get; init; } = true;

    /// <summary>Whether the engine waits for the device between a step's phases (metadata copy, forward, readback) so that
    /// <see cref="EngineMetrics.DecodeStepPhases"/> and <see cref="EngineMetrics.MixedStepPhases"/> separate them; default
    /// false. Costs two waits per step (a few microseconds each): for benchmarks and diagnosis.</summary>
    public bool SeparateStepPhases { get; init; }

    /// <summary>
    /// Times every step on the device's clock as well (<see cref="PagedModelRunner.MeasureDeviceTime"/>): the steps' device
    /// time and the device's idle time between them, in <see cref="StepPhaseTimes.DeviceBusy"/> and
    /// <see cref="StepPhaseTimes.DeviceIdle"/>. Two event records a step; default false.
    /// </summary>
    public bool MeasureDeviceTime { get; init; }

    /// <summary>
    /// Whether a step is enqueued before the previous step's sampled tokens reach the host (vLLM's asynchronous scheduling):
    /// the next step reads them on the device, and the host's work of a step (scheduling, metadata, detokenizing, stop
    /// strings, streaming) runs while the device computes the next one. Applies to steps where every sampled sequence is
    /// greedy or drawn on the device (<see cref="SampleOnDevice"/>), without log-probabilities or penalties (those steps are
    /// collected at once: their buffers are the next step's, and the next step's penalties count their tokens; steps whose
    /// rows sample on the host need the logits first). A sequence that finishes on a token has then computed one more step,
    /// whose result is discarded. Default true.
    /// </summary>
    public bool AsyncScheduling { get; init; } = true;

    /// <summary>
    /// Whether a request without a grammar has its tokens drawn on the device (<see cref="Tessera.Tensors.IBackend.SampleRows"/>;
    /// its penalties and logit bias added there, <see cref="Tessera.Tensors.IBackend.AddToColumns"/>) and its log-probabilities
    /// computed there (<see cref="Tessera.Tensors.IBackend.TokenLogprobs"/>):
    /// only the ids come back, where the host sampler needs the sampled rows' logits (V floats each) and the steps cannot be
    /// scheduled asynchronously. Both follow <see cref="Tessera.Tensors.TokenSampling"/>'s rule, so the tokens are the same
    /// either way up to the rounding of the cut of top-p (and of the last bit of a logf). Default true.
    /// </summary>
    public bool SampleOnDevice { get; init; } = true;

    /// <summary>
    /// Whether a decode step that reads the previous step's tokens in order (asynchronous scheduling, the same batch) takes its
    /// input ids from that step's argmax and advances its positions, slots and context lengths on the device, so that the
    /// next such step copies no metadata from the host while every sequence stays inside its KV block
    /// (<see cref="PagedModelRunner.AdvanceOnDevice"/>): a small kernel inside the recorded step instead of a host-to-device
    /// copy before it, on most decode steps. Default false (not yet measured on a GPU).
    /// </summary>
    public bool AdvanceDecodeOnDevice { get; init; }

    /// <summary>
    /// Speculative decoding, by prompt lookup (<see cref="NgramDrafter"/>) or with a draft model (<see cref="ModelDrafter"/>,
    /// given to the engine): each step, a decoding sequence may carry up to <see cref="SpeculationOptions.DraftTokens"/>
    /// guessed tokens, which the step verifies beside its decode token; every guess kept is a token gained. A greedy
    /// request's output is the greedy output without speculation (to rounding: the verifying step computes more rows), and so
    /// is a sampled one's: a guess is kept when it is the token its row draws (<see cref="Sampling.Sampler.Verify"/>), which
    /// is the token that position draws without speculation; drawn on the device (<see cref="SampleOnDevice"/>), or on the
    /// host from 1 + guesses rows of logits. Steps are then collected at once (<see cref="AsyncScheduling"/> does not apply: a guess needs the
    /// previous token on the host). Default off.
    /// </summary>
    public SpeculationOptions Speculation { get; init; } = new();

    /// <summary>
    /// Serving a tensor-parallel model: how often rank 0's idle engine sends the other ranks an empty step, so that their
    /// wait for the next one (a collective, which times out) never lasts long; default 10 s, well inside the collectives'
    /// timeouts (minutes).
    /// </summary>
    public TimeSpan TensorParallelKeepAlive { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Token ids that end a completion besides the tokenizer's end of text (e.g. a chat template's end of turn);
    /// default none.</summary>
    public IReadOnlyCollection<int> StopTokens { get; init; } = [];

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public EngineOptions Validate()
    {
        ArgumentNullException.ThrowIfNull(Cache, nameof(Cache));
        ArgumentNullException.ThrowIfNull(Scheduler, nameof(Scheduler));
        ArgumentNullException.ThrowIfNull(Speculation, nameof(Speculation));
        Cache.Validate();
        Scheduler.Validate();
        Speculation.Validate();
        if (MaxSequenceLength is <= 1) throw new ArgumentException($"EngineOptions.MaxSequenceLength ({MaxSequenceLength}) must be at least 2");
        return this;
    }
}
