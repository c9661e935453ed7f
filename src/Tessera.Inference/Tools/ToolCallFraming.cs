namespace Tessera.Inference.Tools;

/// <summary>
/// Where a format's calls sit in a reply, for <see cref="ToolCallStreamReader"/>: after a tag (<paramref name="Open"/>: Hermes's
/// block tag, before each call; Mistral's, before the list), or, with no tag, the reply itself is the call, perhaps after
/// <paramref name="Prefix"/> (Llama's python tag).
/// </summary>
/// <param name="Open">The tag a call (or the list of calls) follows; null: the reply is the call.</param>
/// <param name="Close">The tag that ends a call (Hermes), or null: the call runs to the end of the reply.</param>
/// <param name="List">Whether the calls are a JSON array of call objects (Mistral) rather than one object.</param>
/// <param name="Prefix">With no <paramref name="Open"/>, what may come before the call; or null.</param>
internal sealed record ToolCallFraming(string? Open, string? Close, bool List, string? Prefix);
