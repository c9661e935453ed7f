using Tessera.Inference.Serving;

namespace Tessera.Tests.Inference.Serving;

/// <summary>Requests to an <see cref="InferenceEngine"/> as the engine tests send them.</summary>
internal static class EngineRequests
{
    /// <summary>Greedy completions of <paramref name="maxTokens"/> tokens for every prompt at once; each one's tokens.</summary>
    public static async Task<List<int>[]> RunAll(InferenceEngine engine, IEnumerable<int[]> prompts, int maxTokens)
    {
        var tasks = prompts.Select(async p =>
        {
            var tokens = new List<int>();
            await foreach (var e in engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = maxTokens }).ReadAllAsync()) tokens.AddRange(e.Tokens);
            return tokens;
        });
        return await Task.WhenAll(tasks);
    }
}
