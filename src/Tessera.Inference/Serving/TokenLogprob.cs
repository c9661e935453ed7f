namespace Tessera.Inference.Serving;

/// <summary>A candidate token and its log-probability under the model's distribution (before penalties and temperature).</summary>
/// <param name="Id">Token id.</param>
/// <param name="Text">The token's text (its bytes as UTF-8, invalid sequences replaced).</param>
/// <param name="Bytes">The token's bytes.</param>
/// <param name="Logprob">Natural logarithm of its probability.</param>
public sealed record TopLogprob(int Id, string Text, byte[] Bytes, double Logprob);

/// <summary>A generated token's log-probability and the most likely alternatives at its position.</summary>
/// <param name="Token">The chosen token.</param>
/// <param name="Top">The most likely tokens, most likely first (as many as asked).</param>
public sealed record TokenLogprob(TopLogprob Token, IReadOnlyList<TopLogprob> Top);
