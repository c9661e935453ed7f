using Tessera.Inference.Sampling;

namespace Tessera.Inference;

/// <summary>Limits and sampling of one generation.</summary>
public sealed record GenerationOptions
{
    /// <summary>Most new tokens to produce; default 128. Generation also stops when the context is full.</summary>
    public int MaxNewTokens { get; init; } = 128;

    /// <summary>Token ids that end generation (the stop token itself is not emitted).</summary>
    public IReadOnlyCollection<int> StopTokens { get; init; } = [];

    /// <summary>How each token is chosen; default greedy.</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;

    /// <summary>
    /// Whether the decode step (one token through every layer, and the argmax for greedy sampling) is recorded once
    /// and replayed, where the backend can (a CUDA graph on the GPU; the CPU backend runs every step as usual).
    /// Replaying removes the host's per-op launch cost, which dominates decoding of small batches. Default true.
    /// </summary>
    public bool CaptureGraph { get; init; } = true;
}
