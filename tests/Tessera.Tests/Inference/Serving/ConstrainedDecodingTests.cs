using System.Text.Json;
using Tessera.Inference.Constraints;
using Tessera.Inference.Paging;
using Tessera.Inference.Sampling;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// The engine under a JSON grammar (<see cref="CompletionRequest.Grammar"/>) on random byte-vocabulary models: whatever the
/// model prefers, every choice that ends by itself ends with a whole document of the grammar and finish reason stop, greedy and
/// sampled, beside unconstrained requests in the same batch and with speculation on for those.
/// </summary>
public class ConstrainedDecodingTests
{
    private readonly CpuBackend _cpu = new(1);

    // Bounded: booleans, enums and integers of at most 16 digits, so a document ends within a few dozen bytes.
    private const string Schema = """
        {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}, "color": {"enum": ["red", "green", null]},
          "pair": {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": ["integer", "null"]}}, "required": ["a", "b"]}},
         "required": ["ok", "n", "color", "pair"]}
        """;

    private InferenceEngine Engine(string preset, int draftTokens = 0) =>
        new(ByteModels.Random(_cpu, preset, seed: 11, context: 128), new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 1 << 21 },
            Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 32, MaxQueue = 16 },
            Speculation = new SpeculationOptions { DraftTokens = draftTokens },
        });

    private static async Task<(string Text, FinishReason? Finish)[]> Run(InferenceEngine engine, CompletionRequest request)
    {
        var texts = new System.Text.StringBuilder[request.Choices];
        var finishes = new FinishReason?[request.Choices];
        for (int i = 0; i < texts.Length; i++) texts[i] = new();
        await foreach (var e in engine.Submit(request).ReadAllAsync())
        {
            if (e.Text is { } t) texts[e.Index].Append(t);
            if (e.FinishReason is { } f) finishes[e.Index] = f;
        }
        return [.. texts.Select((t, i) => (t.ToString(), finishes[i]))];
    }

    [Theory(Timeout = 120_000)]
    [InlineData("llama-debug", 0.0, 0)]
    [InlineData("llama-debug", 1.0, 0)]
    [InlineData("gpt2-debug", 1.5, 0)]
    [InlineData("llama-debug", 1.0, 5)]      // top-k: every token checked (through the vocabulary's trie) before the cut
    public async Task EveryChoiceIsADocumentOfTheSchema(string preset, double temperature, int topK)
    {
        using var engine = Engine(preset, draftTokens: 3);
        var grammar = JsonGrammar.FromSchema(JsonDocument.Parse(Schema).RootElement);
        var constrained = Run(engine, new CompletionRequest
        {
            Prompt = [.. "{\"answer\": "u8.ToArray().Select(b => (int)b)], MaxTokens = 116, Choices = 3, Seed = 5,   // the context (128) less the prompt: a random model writes long integers
            Sampling = new SamplingOptions { Temperature = temperature, TopK = topK }, Grammar = grammar,
        });
        var free = EngineRequests.RunAll(engine, [[1, 2, 3, 1, 2, 3, 1, 2]], 30);   // beside it, speculating, unconstrained
        foreach (var (text, finish) in await constrained)
        {
            Assert.Equal(FinishReason.Stop, finish);
            using var doc = JsonDocument.Parse(text);
            var root = doc.RootElement;
            Assert.Contains(root.GetProperty("ok").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
            Assert.True(root.GetProperty("n").TryGetInt64(out _), text);
            Assert.Contains(root.GetProperty("color").GetRawText(), new[] { "\"red\"", "\"green\"", "null" });
            Assert.True(root.GetProperty("pair").GetProperty("b").ValueKind is JsonValueKind.Number or JsonValueKind.Null, text);
        }
        Assert.Equal(30, (await free)[0].Count);
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
    }

    /// <summary>A document longer than max_tokens is cut there: finish reason length, and the text is a prefix the grammar allows.</summary>
    [Fact(Timeout = 120_000)]
    public async Task ADocumentLongerThanMaxTokensIsCutWithAPrefixAndSaysLength()
    {
        using var engine = Engine("llama-debug");
        var schema = JsonSerializer.Serialize(new { type = "object", properties = new { x = new { @const = "a long constant value" } }, required = new[] { "x" } });
        var grammar = JsonGrammar.FromSchema(JsonDocument.Parse(schema).RootElement);
        var (text, finish) = (await Run(engine, new CompletionRequest { Prompt = [65], MaxTokens = 6, Grammar = grammar }))[0];
        Assert.Equal(FinishReason.Length, finish);
        Assert.True(grammar.Start().Accepts(System.Text.Encoding.UTF8.GetBytes(text)), text);
        Assert.Equal(6, System.Text.Encoding.UTF8.GetByteCount(text));
    }

    /// <summary>
    /// A grammar with one document up to spaces (a const string and a null) writes it, whatever the model prefers, and the
    /// choice ends at its last byte (finish reason stop, well before max_tokens), the usage counting its tokens.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task AGrammarOfOneDocumentWritesItAndEndsThere()
    {
        using var engine = Engine("gpt2-debug");
        const string value = "Gets the value; \"quoted\" é";
        var schema = JsonSerializer.Serialize(new { type = "object", properties = new { x = new { @const = value }, y = new { type = "null" } }, required = new[] { "x", "y" } });
        var grammar = JsonGrammar.FromSchema(JsonDocument.Parse(schema).RootElement);
        var events = new List<CompletionEvent>();
        await foreach (var e in engine.Submit(new CompletionRequest { Prompt = [65, 66], MaxTokens = 100, Grammar = grammar }, TestContext.Current.CancellationToken)
            .ReadAllAsync(TestContext.Current.CancellationToken)) events.Add(e);
        string text = string.Concat(events.Select(e => e.Text));
        using var doc = JsonDocument.Parse(text);
        Assert.Equal(value, doc.RootElement.GetProperty("x").GetString());
        Assert.Equal(JsonValueKind.Null, doc.RootElement.GetProperty("y").ValueKind);
        Assert.EndsWith("}", text);
        Assert.Equal(FinishReason.Stop, events.Single(e => e.FinishReason is not null).FinishReason);
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(text), events.Single(e => e.Usage is not null).Usage!.CompletionTokens);
    }
}
