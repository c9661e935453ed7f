namespace Tessera.Inference.Serving;

/// <summary>
/// What an <see cref="InferenceEngine"/> counts, for /metrics: requests by outcome, tokens, time to first token and
/// inter-token latency, and the gauges (running and waiting sequences, KV blocks in use) as of the last step.
/// Counters are updated with interlocked operations; readers see each value atomically.
/// </summary>
public sealed class EngineMetrics
{
    private long _requestsStarted, _requestsFinished, _requestsCancelled, _requestsRejected, _promptTokens, _generatedTokens,
        _cachedPromptTokens, _steps, _preemptions, _draftTokens, _acceptedDraftTokens, _constrainedRequests, _wholeDocuments;
    private int _running, _waiting, _blocksInUse;

    internal EngineMetrics(int totalBlocks) => KvBlocksTotal = totalBlocks;

    /// <summary>Requests accepted.</summary>
    public long RequestsStarted => Interlocked.Read(ref _requestsStarted);

    /// <summary>Requests whose every choice finished (stop or length).</summary>
    public long RequestsFinished => Interlocked.Read(ref _requestsFinished);

    /// <summary>Requests cancelled before they finished (client gone).</summary>
    public long RequestsCancelled => Interlocked.Read(ref _requestsCancelled);

    /// <summary>Requests refused because the queue was full.</summary>
    public long RequestsRejected => Interlocked.Read(ref _requestsRejected);

    /// <summary>Prompt tokens of accepted requests.</summary>
    public long PromptTokens => Interlocked.Read(ref _promptTokens);

    /// <summary>Tokens generated (every choice).</summary>
    public long GeneratedTokens => Interlocked.Read(ref _generatedTokens);

    /// <summary>Prompt tokens served from the prefix cache.</summary>
    public long CachedPromptTokens => Interlocked.Read(ref _cachedPromptTokens);

    /// <summary>Engine steps run.</summary>
    public long Steps => Interlocked.Read(ref _steps);

    /// <summary>Sequences preempted (their keys and values recomputed later).</summary>
    public long Preemptions => Interlocked.Read(ref _preemptions);

    /// <summary>Draft tokens verified (speculative decoding).</summary>
    public long DraftTokens => Interlocked.Read(ref _draftTokens);

    /// <summary>Of <see cref="DraftTokens"/>, those the model agreed with: tokens gained over decoding one a step.</summary>
    public long AcceptedDraftTokens => Interlocked.Read(ref _acceptedDraftTokens);

    /// <summary>Sequences in the running batch after the last step.</summary>
    public int Running => Volatile.Read(ref _running);

    /// <summary>Sequences waiting after the last step.</summary>
    public int Waiting => Volatile.Read(ref _waiting);

    /// <summary>KV blocks referenced by some sequence after the last step, or after the last choice that finished (so a client that
    /// has read a finish reason reads a count without that choice's blocks).</summary>
    public int KvBlocksInUse => Volatile.Read(ref _blocksInUse);

    /// <summary>KV blocks in the pool.</summary>
    public int KvBlocksTotal { get; }

    /// <summary>Seconds from a request's arrival to its first generated token.</summary>
    public LatencyHistogram TimeToFirstToken { get; } = new(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60);

    /// <summary>Seconds between consecutive tokens of a choice.</summary>
    public LatencyHistogram InterTokenLatency { get; } = new(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5);

    internal void RequestStarted(int promptTokens) { Interlocked.Increment(ref _requestsStarted); Interlocked.Add(ref _promptTokens, promptTokens); }
    internal void RequestFinished() => Interlocked.Increment(ref _requestsFinished);
    internal void RequestCancelled() => Interlocked.Increment(ref _requestsCancelled);
    internal void RequestRejected() => Interlocked.Increment(ref _requestsRejected);
    internal void TokensGenerated(int count) => Interlocked.Add(ref _generatedTokens, count);
    internal void PromptTokensCached(int count) => Interlocked.Add(ref _cachedPromptTokens, count);
    internal void Preempted(int count) => Interlocked.Add(ref _preemptions, count);
    /// <summary>Requests constrained to a JSON grammar (response_format, forced tool calls).</summary>
    public long ConstrainedRequests => Interlocked.Read(ref _constrainedRequests);

    /// <summary>Constrained choices that ended with a whole document (the others ran into max_tokens or the context).</summary>
    public long WholeDocuments => Interlocked.Read(ref _wholeDocuments);

    internal void ConstrainedRequestStarted() => Interlocked.Increment(ref _constrainedRequests);
    internal void WholeDocument() => Interlocked.Increment(ref _wholeDocuments);
    internal void DraftsVerified(int drafts, int accepted) { Interlocked.Add(ref _draftTokens, drafts); Interlocked.Add(ref _acceptedDraftTokens, accepted); }

    private readonly object _phaseLock = new();
    private StepPhaseTimes _decodePhases = StepPhaseTimes.Zero, _mixedPhases = StepPhaseTimes.Zero;

    /// <summary>Where the decode-only steps spent their time so far (a snapshot).</summary>
    public StepPhaseTimes DecodeStepPhases { get { lock (_phaseLock) return _decodePhases; } }

    /// <summary>Where the steps with prefill chunks spent their time so far (a snapshot).</summary>
    public StepPhaseTimes MixedStepPhases { get { lock (_phaseLock) return _mixedPhases; } }

    internal void StepPhases(bool decodeOnly, StepPhaseTimes step)
    {
        lock (_phaseLock)
        {
            if (decodeOnly) _decodePhases = _decodePhases.Plus(step);
            else _mixedPhases = _mixedPhases.Plus(step);
        }
    }

    internal void StepDone(int running, int waiting, int blocksInUse)
    {
        Interlocked.Increment(ref _steps);
        Gauges(running, waiting, blocksInUse);
    }

    internal void Gauges(int running, int waiting, int blocksInUse)
    {
        Volatile.Write(ref _running, running);
        Volatile.Write(ref _waiting, waiting);
        Volatile.Write(ref _blocksInUse, blocksInUse);
    }
}
