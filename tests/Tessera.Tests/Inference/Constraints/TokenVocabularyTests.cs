using System.Text;
using System.Text.Json;
using Tessera.Inference.Constraints;
using Tessera.Models.Tokenization;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference.Constraints;

/// <summary>
/// The vocabulary's trie and its string shortcut give, for every token, the verdict of checking its bytes one token at a time,
/// at every state of random walks through a schema and through json_object mode, over a vocabulary of random multi-byte tokens
/// (quotes, backslashes, digits, the syntax's characters, letters, spaces) beside every single byte, and an empty token.
/// </summary>
public class TokenVocabularyTests
{
    /// <summary>A tokenizer that only knows its tokens' bytes.</summary>
    private sealed class ListTokenizer(IReadOnlyList<byte[]> tokens) : ITokenizer
    {
        public int VocabSize => tokens.Count;
        public int? EndOfTextId => null;
        public int[] Encode(string text) => throw new NotSupportedException();
        public string Decode(ReadOnlySpan<int> ids) => throw new NotSupportedException();
        public ReadOnlySpan<byte> TokenBytes(int id) => tokens[id];
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EveryTokensVerdictIsItsOwnCheck(bool schema)
    {
        var rng = TestRandom.Create();
        var alphabet = Encoding.ASCII.GetBytes("{}[]:,\"\\-+.eE0123456789abcdefnrtulsu \n");
        var tokens = Enumerable.Range(0, 256).Select(b => new[] { (byte)b }).ToList();
        tokens.Add([]);
        for (int i = 0; i < 3000; i++) tokens.Add([.. Enumerable.Range(0, 2 + rng.Next(5)).Select(_ => alphabet[rng.Next(alphabet.Length)])]);
        var vocabulary = new TokenVocabulary(new ListTokenizer(tokens));
        var grammar = schema
            ? JsonGrammar.FromSchema(JsonDocument.Parse("""
                {"type": "object", "properties": {"s": {"type": "string"}, "n": {"type": "number"}, "e": {"enum": ["a\"b", 12, 1]},
                 "l": {"type": "array", "items": {"type": ["integer", "null"]}}}, "required": ["s", "n", "e", "l"]}
                """).RootElement)
            : JsonGrammar.AnyObject();
        var mask = new bool[tokens.Count];
        int states = 0;
        for (int walk = 0; walk < 20; walk++)
        {
            var r = grammar.Start();
            for (int step = 0; step < 60 && !r.IsComplete; step++, states++)
            {
                vocabulary.Allowed(r, mask);
                for (int t = 0; t < tokens.Count; t++)
                    Assert.True(mask[t] == r.Accepts(tokens[t]), $"token {t} '{Encoding.ASCII.GetString(tokens[t])}': trie {mask[t]}");
                var next = Enumerable.Range(0, tokens.Count).Where(t => mask[t] && tokens[t].Length > 0).ToArray();
                r.Advance(tokens[next[rng.Next(next.Length)]]);
            }
        }
        Assert.True(states > 500, $"{states} states checked");
    }
}
