namespace Tessera.Inference.Serving;

/// <summary>Token counts of a finished request (OpenAI's usage).</summary>
/// <param name="PromptTokens">Prompt tokens (counted once, whatever the number of choices).</param>
/// <param name="CompletionTokens">Generated tokens over every choice.</param>
/// <param name="CachedPromptTokens">Prompt tokens whose keys and values came from the prefix cache.</param>
public sealed record CompletionUsage(int PromptTokens, int CompletionTokens, int CachedPromptTokens)
{
    /// <summary>Prompt plus completion tokens.</summary>
    public int TotalTokens => PromptTokens + CompletionTokens;
}

/// <summary>
/// What the engine streams for a request: text of one choice as it is decided (<see cref="Text"/> may be empty while a
/// possible stop string is held back), its tokens' log-probabilities when asked, the choice's finish reason once, and
/// last, after every choice finished, one event with <see cref="Usage"/>.
/// </summary>
public sealed record CompletionEvent
{
    /// <summary>Choice index, 0 .. n - 1 (0 on the usage event).</summary>
    public int Index { get; init; }

    /// <summary>New text of the choice.</summary>
    public string Text { get; init; } = "";

    /// <summary>Token ids generated with this event.</summary>
    public IReadOnlyList<int> Tokens { get; init; } = [];

    /// <summary>Log-probabilities of <see cref="Tokens"/> when the request asked for them, else null.</summary>
    public IReadOnlyList<TokenLogprob>? Logprobs { get; init; }

    /// <summary>Set on the choice's last event.</summary>
    public FinishReason? FinishReason { get; init; }

    /// <summary>Set on the request's last event.</summary>
    public CompletionUsage? Usage { get; init; }
}
