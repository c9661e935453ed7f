using Tessera.Inference.Sampling;

namespace Tessera.Inference.Serving;

/// <summary>One request to the engine: a tokenized prompt and how to continue it (OpenAI's completion parameters).</summary>
public sealed record CompletionRequest
{
    /// <summary>Prompt token ids; at least one.</summary>
    public required IReadOnlyList<int> Prompt { get; init; }

    /// <summary>Most new tokens per choice; null: up to the end of the context.</summary>
    public int? MaxTokens { get; init; }

    /// <summary>Temperature, top-k, top-p; the seed, when <see cref="Seed"/> is null, is drawn at random.</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;

    /// <summary>Seed of choice 0's random stream (choice i uses seed + i); null: a random seed.</summary>
    public ulong? Seed { get; init; }

    /// <summary>Subtracted once from the logit of every token already generated (OpenAI's presence_penalty, in [-2, 2]); default 0.</summary>
    public double PresencePenalty { get; init; }

    /// <summary>Subtracted from a token's logit per time it was generated (OpenAI's frequency_penalty, in [-2, 2]); default 0.</summary>
    public double FrequencyPenalty { get; init; }

    /// <summary>Strings that end a choice, matched on the decoded text across token boundaries; not included in the output.</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];

    /// <summary>Number of choices generated for the prompt; default 1.</summary>
    public int Choices { get; init; } = 1;

    /// <summary>When set, each token's log-probability is returned with this many alternatives (0 to 20); null: none.</summary>
    public int? TopLogprobs { get; init; }

    /// <summary>
    /// Added to the logits of these token ids before every choice is made (OpenAI's logit_bias, each in [-100, 100]: -100
    /// bans a token, 100 all but forces it); the log-probabilities stay the model's own. Default none.
    /// </summary>
    public IReadOnlyDictionary<int, double> LogitBias { get; init; } = new Dictionary<int, double>();

    /// <summary>
    /// When set, each choice is constrained to a JSON document of this grammar (OpenAI's response_format json_object or
    /// json_schema): only tokens whose bytes the grammar accepts are sampled, and the choice ends (finish reason stop) when the
    /// document is complete. Such choices are not speculated. Default none.
    /// </summary>
    public Constraints.JsonGrammar? Grammar { get; init; }

    /// <summary>
    /// The served LoRA adapter to run with (multi-LoRA): 0 the base model (default), k the adapter in slot k - 1 (the start-up
    /// adapters hold slots 0, 1, ...; <see cref="InferenceEngine.AdapterSlot"/>). Ignored when <see cref="AdapterName"/> is given.
    /// Requests for different adapters share the engine's continuous batch.
    /// </summary>
    public int Adapter { get; init; }

    /// <summary>
    /// The served LoRA adapter to run with, by name (<see cref="InferenceEngine.AdapterNames"/>), or null to use <see cref="Adapter"/>.
    /// Resolved when the request is queued, in order with loads and unloads: an adapter unloaded before is refused (model_not_found).
    /// </summary>
    public string? AdapterName { get; init; }
}
