namespace Tessera.Inference.Benchmarks;

/// <summary>The timings of a <see cref="GenerationBenchmark"/> (medians over its measured rounds) and the memory traffic they imply.</summary>
public sealed record GenerationBenchmarkResult
{
    /// <summary>Parameters of the model, each read once per decoded token.</summary>
    public required long ParameterCount { get; init; }

    /// <summary>Prompt tokens prefilled per round.</summary>
    public required int PromptLength { get; init; }

    /// <summary>Tokens produced per round (the first from the prefill).</summary>
    public required int NewTokens { get; init; }

    /// <summary>Rounds the medians are taken over (the warm-up round excluded).</summary>
    public required int MeasuredRounds { get; init; }

    /// <summary>Median milliseconds from the start of a round to its first token: prefill, one logits row read back, sampling.</summary>
    public required double PrefillMilliseconds { get; init; }

    /// <summary>Median milliseconds from a round's first token to its last: <see cref="DecodedTokens"/> decode steps.</summary>
    public required double DecodeMilliseconds { get; init; }

    /// <summary>Bytes of weights read per decoded token: every parameter once (a tied head reads the whole embedding) in the model's dtype.</summary>
    public required double WeightBytesPerToken { get; init; }

    /// <summary>Bytes of cached keys and values read per decoded token, averaged over the decode steps (2 x L x cached positions x K heads x D).</summary>
    public required double KvCacheBytesPerToken { get; init; }

    /// <summary>
    /// Whether the measured decode steps replayed a recorded graph (<see cref="GenerationOptions.CaptureGraph"/> on a
    /// backend that records) rather than launching every op from the host.
    /// </summary>
    public required bool DecodeStepReplayed { get; init; }

    /// <summary>Peak bytes the device allocator had in use; null where the caller gave no way to read it.</summary>
    public long? PeakDeviceBytes { get; init; }

    /// <summary>Decode steps per round: <see cref="NewTokens"/> - 1.</summary>
    public int DecodedTokens => NewTokens - 1;

    /// <summary>Prompt tokens per second of prefill.</summary>
    public double PrefillTokensPerSecond => PromptLength / (PrefillMilliseconds / 1000);

    /// <summary>Median milliseconds per decode step.</summary>
    public double DecodeMillisecondsPerToken => DecodeMilliseconds / DecodedTokens;

    /// <summary>Decoded tokens per second.</summary>
    public double DecodeTokensPerSecond => DecodedTokens / (DecodeMilliseconds / 1000);

    /// <summary>Bytes read per decoded token: weights plus the mean KV cache read.</summary>
    public double BytesPerDecodedToken => WeightBytesPerToken + KvCacheBytesPerToken;

    /// <summary>Achieved memory bandwidth of decoding, in bytes per second: <see cref="BytesPerDecodedToken"/> x <see cref="DecodeTokensPerSecond"/>.</summary>
    public double BandwidthBytesPerSecond => BytesPerDecodedToken * DecodeTokensPerSecond;
}
