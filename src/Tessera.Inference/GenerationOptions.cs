using Tessera.Inference.Sampling;
using Tessera.Inference.Speculation;

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

    /// <summary>
    /// For a model with a sliding window (Mistral), whether the keys and values live in a cache bounded by the window: a
    /// paged pool of about window + <see cref="WindowPrefillChunk"/> positions whose blocks are reused as the window slides,
    /// so generating far past the window costs the window's memory only. False keeps every position in the dense cache
    /// (memory grows with the sequence; the window then only limits what attention reads). Ignored without a window, and
    /// for a model split over tensor-parallel ranks (the paged runner serves one device). Default true.
    /// </summary>
    public bool BoundedWindowCache { get; init; } = true;

    /// <summary>
    /// Speculative decoding by prompt lookup (<see cref="NgramDrafter"/>): each step feeds the last token and up to
    /// <see cref="SpeculationOptions.DraftTokens"/> tokens guessed from the text so far, keeps the guesses the model agrees
    /// with and the model's token after them, and truncates the cache past them. Greedy output is greedy decoding's, and
    /// sampled output is the same seed's without speculation (<see cref="Sampler.Verify"/>: a guess is kept when it is the
    /// token its position draws; the rows' logits are read to the host). Steps then run
    /// eagerly (no recorded graph: their row count varies). In the bounded window cache of a windowed model the guesses
    /// are verified in the paged runner's steps instead, and a draft model keeps its keys in a pool beside the served one,
    /// through the same block table (its blocks kept while either model reads them). Default off.
    /// </summary>
    public SpeculationOptions Speculation { get; init; } = new();

    /// <summary>
    /// Most prompt tokens one forward pass computes in the bounded window cache (the prompt is prefilled in chunks of this
    /// many); the cache holds window + this many positions, rounded up to blocks. Default 256; at least 1.
    /// </summary>
    public int WindowPrefillChunk { get; init; } = 256;

    /// <summary>
    /// When set, the tokens are constrained to a JSON document of this grammar (structured output, as the server's
    /// response_format): only tokens whose bytes it accepts are chosen (<see cref="Constraints.ConstrainedSampling"/>, the
    /// logits read to the host each step), and generation ends once the document is whole. Needs <see cref="Tokenizer"/>;
    /// not with speculation or the bounded window cache. Default none.
    /// </summary>
    public Constraints.JsonGrammar? Grammar { get; init; }

    /// <summary>The tokenizer whose tokens' bytes <see cref="Grammar"/> reads; required with it.</summary>
    public Tessera.Models.Tokenization.ITokenizer? Tokenizer { get; init; }
}
