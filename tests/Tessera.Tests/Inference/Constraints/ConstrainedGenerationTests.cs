using System.Text;
using System.Text.Json;
using Tessera.Inference;
using Tessera.Inference.Constraints;
using Tessera.Inference.Sampling;
using Tessera.Models.Tokenization;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Constraints;

/// <summary>
/// <see cref="TextGenerator"/> under a JSON grammar (<see cref="GenerationOptions.Grammar"/>, what `tessera generate --json-schema`
/// uses) on a random byte-vocabulary model: greedy and sampled (with top-k, so every token is checked through the vocabulary's
/// trie) generations end as whole documents of the schema, and the options it cannot run with are refused.
/// </summary>
public class ConstrainedGenerationTests
{
    private readonly CpuBackend _cpu = new(1);

    private static JsonGrammar Schema() => JsonGrammar.FromSchema(JsonDocument.Parse("""
        {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}, "tag": {"enum": ["a", "b"]}}, "required": ["ok", "n", "tag"]}
        """).RootElement);

    [Theory]
    [InlineData(0.0, 0)]
    [InlineData(1.0, 0)]
    [InlineData(1.0, 8)]
    public void GenerationsAreWholeDocumentsOfTheSchema(double temperature, int topK)
    {
        var model = Tessera.Tests.Inference.ByteModels.Random(_cpu, "gpt2-debug", seed: 5, context: 128);
        var generator = new TextGenerator(model);
        for (ulong seed = 0; seed < 3; seed++)
        {
            var tokens = generator.Generate([65, 66, 67], new GenerationOptions
            {
                MaxNewTokens = 100, Grammar = Schema(), Tokenizer = new ByteTokenizer(),
                Sampling = new SamplingOptions { Temperature = temperature, TopK = topK, Seed = seed },
            }).ToList();
            Assert.True(generator.LastRunDocumentComplete, "the generation did not end with a whole document");
            using var doc = JsonDocument.Parse(Encoding.UTF8.GetString([.. tokens.Select(t => (byte)t)]));
            Assert.True(doc.RootElement.GetProperty("n").TryGetInt64(out _));
            Assert.Contains(doc.RootElement.GetProperty("tag").GetString(), new[] { "a", "b" });
        }
    }

    [Fact]
    public void AGrammarNeedsATokenizerAndRunsWithoutSpeculation()
    {
        var model = Tessera.Tests.Inference.ByteModels.Random(_cpu, "gpt2-debug", seed: 5, context: 64);
        var generator = new TextGenerator(model);
        var e = Assert.Throws<ArgumentException>(() => generator.Generate([65], new GenerationOptions { Grammar = Schema() }).ToList());
        Assert.Contains("Tokenizer", e.Message);
        e = Assert.Throws<ArgumentException>(() => generator.Generate([65], new GenerationOptions
        {
            Grammar = Schema(), Tokenizer = new ByteTokenizer(), Speculation = new Tessera.Inference.Speculation.SpeculationOptions { DraftTokens = 2 },
        }).ToList());
        Assert.Contains("without speculative decoding", e.Message);
    }
}
