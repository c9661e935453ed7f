using System.Text;
using System.Text.Json;
using Tessera.Inference.Constraints;
using Tessera.Inference.Sampling;
using Tessera.Inference.Tools;
using Tessera.Models.Tokenization;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference.Tools;

/// <summary>
/// The grammars of forced replies of one or more calls (tool_choice required with parallel calls), byte by byte: Hermes's
/// calls between their tags, ended by the end-of-text token after any closing tag; Mistral's list, ended by its bracket; one
/// call only with parallel calls off, a named tool, Llama's format, or Hermes without an end-of-text token. The arguments
/// follow the schema of the tool the name chose. The vocabulary's masks agree with the byte-level verdicts along random walks,
/// the end-of-text token is allowed exactly where the text may end, and every walk's text parses into its calls.
/// </summary>
public class ForcedToolCallsGrammarTests
{
    private static readonly ChatTool[] Tools =
    [
        new("get_weather", null, JsonDocument.Parse("""
            {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "celsius": {"type": "boolean"}}, "required": ["city", "celsius"]}
            """).RootElement.Clone()),
        new("get_time", null, JsonDocument.Parse("""{"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}""").RootElement.Clone()),
    ];

    private static readonly ToolChoice Required = new(ToolChoiceMode.Required);

    private const string Weather = """{"name": "get_weather", "arguments": {"city": "Oslo", "celsius": true}}""";
    private const string Time = """{"name": "get_time", "arguments": {"utc": false}}""";

    private static JsonGrammar Several(ToolCallFormat format) => format.ForcedCalls(Tools, Required, parallel: true, endOfTextToken: true);

    /// <summary>How many bytes of <paramref name="text"/> the grammar takes one at a time, and the recognizer after them.</summary>
    private static (int Taken, JsonRecognizer State) Feed(JsonGrammar grammar, string text)
    {
        var r = grammar.Start();
        var bytes = Encoding.UTF8.GetBytes(text);
        for (int i = 0; i < bytes.Length; i++)
        {
            if (!r.Accepts(bytes.AsSpan(i, 1))) return (i, r);
            r.Advance(bytes.AsSpan(i, 1));
        }
        return (bytes.Length, r);
    }

    private static string Hermes(params string[] calls) => string.Join("\n<tool_call>\n", calls.Select(c => c + "\n</tool_call>"));

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void HermesTakesOneTwoOrThreeCallsAndMayEndAfterEachClosingTag(int count)
    {
        var calls = Enumerable.Range(0, count).Select(i => i % 2 == 0 ? Weather : Time).ToArray();
        string text = Hermes(calls);
        var (taken, state) = Feed(Several(ToolCallFormat.Hermes), text);
        Assert.Equal(Encoding.UTF8.GetByteCount(text), taken);
        Assert.True(state.CanEnd);
        Assert.False(state.IsComplete);                       // another call may follow: only the end-of-text token ends it
        Assert.True(state.Accepts("\n<tool_call>\n"u8));
        var (content, parsed) = ToolCallFormat.Hermes.Parse(text, forced: true, () => "id");
        Assert.Null(content);
        Assert.Equal(calls.Select(c => JsonDocument.Parse(c).RootElement.GetProperty("name").GetString()), parsed.Select(c => c.Name));

        // Nowhere else may it end: not inside a call, not before its closing tag, not between two calls.
        var grammar = Several(ToolCallFormat.Hermes);
        var r = grammar.Start();
        var bytes = Encoding.UTF8.GetBytes(text);
        int ends = 0;
        for (int i = 0; i < bytes.Length; i++)
        {
            if (r.CanEnd) ends++;
            r.Advance(bytes.AsSpan(i, 1));
        }
        Assert.Equal(count - 1, ends);                        // after each closing tag but the last (checked above)
    }

    [Theory]
    [InlineData("", 0)]                                                                        // no call: may not end
    [InlineData("\n</tool_call>", 0)]                                                          // no call: a closing tag
    [InlineData(Weather + "\n</tool_call>\nThen\n<tool_call>\n" + Time + "\n</tool_call>", 85)] // text between calls
    [InlineData(Weather + "\n</tool_call><tool_call>\n" + Time + "\n</tool_call>", 84)]       // not as the template writes them
    [InlineData(Weather + " \n</tool_call>", 71)]                                             // a space before the tag
    [InlineData(Weather + "\n</tool_call>\n<tool_call>\n{\"name\": \"get_date\"", 111)]        // a name that is not a tool
    [InlineData(Weather + "\n</tool_call>\n<tool_call>\n{\"arguments\": {}}", 99)]             // a call without its name first
    [InlineData(Weather + "\n</tool_call>\n<tool_call>\n" + Time + "\n</tool", -1)]            // cut inside a tag: may not end
    public void HermesRefusesNoCallTextBetweenCallsAndMalformedCalls(string text, int refusedAt)
    {
        var (taken, state) = Feed(Several(ToolCallFormat.Hermes), text);
        if (refusedAt < 0)
        {
            Assert.Equal(Encoding.UTF8.GetByteCount(text), taken);
            Assert.False(state.CanEnd);
            return;
        }
        if (refusedAt == 0 && text.Length == 0) { Assert.False(state.CanEnd); return; }
        Assert.Equal(refusedAt, taken);
    }

    /// <summary>With several tools, the arguments follow the schema of the tool the name chose (a discriminated union on "name").</summary>
    [Theory]
    [InlineData("""{"name": "get_weather", "arguments": {"city": "Paris", "celsius": false}}""", true)]
    [InlineData("""{"name": "get_time", "arguments": {"utc": true}}""", true)]
    [InlineData("""{"name": "get_time", "arguments": {"city": "Paris", "celsius": false}}""", false)]
    [InlineData("""{"name": "get_weather", "arguments": {"utc": true}}""", false)]
    [InlineData("""{"name": "get_weather", "arguments": {"city": "Rome", "celsius": false}}""", false)]
    [InlineData("""{"name": "get_time", "arguments": {}}""", false)]
    public void TheArgumentsFollowTheSchemaOfTheToolTheNameChose(string call, bool takes)
    {
        foreach (var grammar in new[] { ToolCallFormat.Hermes.ForcedCall(Tools, Required), Several(ToolCallFormat.Hermes) })
        {
            var (taken, state) = Feed(grammar, call);
            Assert.Equal(takes, taken == Encoding.UTF8.GetByteCount(call) && (state.IsComplete || state.Accepts("\n</tool_call>"u8)));
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void MistralTakesOneTwoOrThreeCallsAndItsBracketEndsTheList(int count)
    {
        var calls = Enumerable.Range(0, count).Select(i => i % 2 == 0 ? Weather : Time).ToArray();
        string text = string.Join(", ", calls) + "]";
        var grammar = Several(ToolCallFormat.Mistral);
        var (taken, state) = Feed(grammar, text);
        Assert.Equal(Encoding.UTF8.GetByteCount(text), taken);
        Assert.True(state.IsComplete);                        // the bracket ends the reply: no end-of-text token needed
        Assert.False(Feed(grammar, text[..^1]).State.CanEnd);
        var (content, parsed) = ToolCallFormat.Mistral.Parse(text, forced: true, ToolCallFormat.Mistral.NewCallId);
        Assert.Null(content);
        Assert.Equal(count, parsed.Count);
    }

    [Theory]
    [InlineData("]", 0)]                                          // no call
    [InlineData(Weather + ",]", 72)]                              // a trailing separator
    [InlineData(Weather + "," + Time + "]", 72)]                  // not the template's separator
    [InlineData(Weather + ", \"text\"]", 73)]                     // not a call
    public void MistralRefusesNoCallAndWhatIsNotACallList(string text, int refusedAt)
    {
        Assert.Equal(refusedAt, Feed(Several(ToolCallFormat.Mistral), text).Taken);
    }

    /// <summary>
    /// Exactly one call, ending the text at its JSON's end, as before: parallel calls off, a named tool, Llama's format (its
    /// template writes one call a reply), and Hermes when the engine has no end-of-text token to end a reply between calls.
    /// </summary>
    [Fact]
    public void OneCallWhenParallelCallsAreOffTheToolIsNamedTheFormatIsLlamasOrNothingCouldEndTheCalls()
    {
        var one = new[]
        {
            (ToolCallFormat.Hermes.ForcedCalls(Tools, Required, parallel: false, endOfTextToken: true), Weather),
            (ToolCallFormat.Hermes.ForcedCalls(Tools, new ToolChoice(ToolChoiceMode.Named, "get_weather"), parallel: true, endOfTextToken: true), Weather),
            (ToolCallFormat.Hermes.ForcedCalls(Tools, Required, parallel: true, endOfTextToken: false), Weather),
            (ToolCallFormat.Mistral.ForcedCalls(Tools, Required, parallel: false, endOfTextToken: true), Weather),
            (ToolCallFormat.LlamaJson.ForcedCalls(Tools, Required, parallel: true, endOfTextToken: true), Weather.Replace("arguments", "parameters")),
        };
        foreach (var (grammar, call) in one)
        {
            var (taken, state) = Feed(grammar, call);
            Assert.Equal(Encoding.UTF8.GetByteCount(call), taken);
            Assert.True(state.IsComplete, grammar.Description);
        }
        Assert.False(ToolCallFormat.LlamaJson.MayForceSeveral(endOfTextToken: true));
        Assert.False(ToolCallFormat.Hermes.MayForceSeveral(endOfTextToken: false));
        Assert.True(ToolCallFormat.Mistral.MayForceSeveral(endOfTextToken: false));
    }

    /// <summary>A tokenizer that only knows its tokens' bytes; its last token is the end of text (no bytes).</summary>
    private sealed class ListTokenizer(IReadOnlyList<byte[]> tokens) : ITokenizer
    {
        public int VocabSize => tokens.Count;
        public int? EndOfTextId => tokens.Count - 1;
        public int[] Encode(string text) => throw new NotSupportedException();
        public string Decode(ReadOnlySpan<int> ids) => throw new NotSupportedException();
        public ReadOnlySpan<byte> TokenBytes(int id) => tokens[id];
    }

    /// <summary>
    /// Random walks through Hermes's and Mistral's grammars of several calls over a vocabulary of every byte, pieces of the tags,
    /// the calls' keys and values, and random tokens of their characters: at every state the trie's mask is each token's own
    /// check, and the engine's sampler (<see cref="ConstrainedVocabulary"/>, with the end-of-text token favoured) draws the
    /// end-of-text token exactly where the text may end. Each walk that ends parses into as many calls as it wrote.
    /// </summary>
    [Theory]
    [InlineData("hermes")]
    [InlineData("mistral")]
    public void MasksAgreeWithTheBytesAndTheEndOfTextTokenComesOnlyWhereTheCallsMayEnd(string formatName)
    {
        var format = formatName == "hermes" ? ToolCallFormat.Hermes : ToolCallFormat.Mistral;
        var rng = TestRandom.Create(20261205);
        var tokens = Enumerable.Range(0, 256).Select(b => new[] { (byte)b }).ToList();
        string[] pieces = ["\n<tool_call>\n", "\n</tool_call>", "\n<", "tool_call>", "</tool", "_call>\n", ", ", "]", "{\"name\": \"", "get_weather\"",
            "get_time\", ", "\"arguments\": {", "\"city\": \"Oslo\"", "\"Paris\"", ", \"celsius\": ", "true}", "false}}", "\"utc\": ", "}}", "}\n</tool_call>"];
        foreach (var p in pieces) tokens.Add(Encoding.UTF8.GetBytes(p));
        var alphabet = Encoding.ASCII.GetBytes("{}[]:,\"\\<>/\n _acegilmnorstuwyPOhdf");
        for (int i = 0; i < 2000; i++) tokens.Add([.. Enumerable.Range(0, 2 + rng.Next(5)).Select(_ => alphabet[rng.Next(alphabet.Length)])]);
        tokens.Add([]);                                       // the end-of-text token
        var tokenizer = new ListTokenizer(tokens);
        int eot = tokenizer.EndOfTextId!.Value;
        var trie = new TokenVocabulary(tokenizer);
        var vocabulary = new ConstrainedVocabulary(tokenizer);
        var grammar = Several(format);
        var mask = new bool[tokens.Count];
        int states = 0, ended = 0, mostCalls = 0;
        for (int walk = 0; walk < 30; walk++)
        {
            var r = grammar.Start();
            var text = new List<byte>();
            bool stopped = false;
            for (int step = 0; step < 200 && !r.IsComplete && !stopped; step++, states++)
            {
                trie.Allowed(r, mask);
                for (int t = 0; t < eot; t++)
                    Assert.True(mask[t] == r.Accepts(tokens[t]), $"walk {walk} step {step}: token {t} '{Encoding.ASCII.GetString(tokens[t])}': trie {mask[t]}");
                // The sampler with the end-of-text token far ahead of the rest: it comes exactly where the text may end.
                var scores = new float[tokens.Count];
                scores[eot] = 50;
                int drawn = vocabulary.Sample(new Sampler(new SamplingOptions { Temperature = 0 }), new SamplingOptions { Temperature = 0 }, scores, position: step, r, new HashSet<int> { eot });
                Assert.Equal(r.CanEnd, drawn == eot);
                // The walk ends there now and then, else goes on with a random allowed token (pieces of calls more often).
                if (r.CanEnd && rng.Next(3) == 0) { stopped = true; break; }
                var next = Enumerable.Range(0, eot).Where(t => mask[t]).ToArray();
                var preferred = next.Where(t => t >= 256 && t < 256 + pieces.Length).ToArray();
                int token = preferred.Length > 0 && rng.Next(4) > 0 ? preferred[rng.Next(preferred.Length)] : next[rng.Next(next.Length)];
                r.Advance(tokens[token]);
                text.AddRange(tokens[token]);
            }
            if (!stopped && !r.IsComplete) continue;          // cut by the step bound
            ended++;
            string reply = Encoding.UTF8.GetString([.. text]);
            var (_, calls) = format.Parse(reply, forced: true, () => "id");
            int written = CountOf(reply, "\"name\"");            // each call's one key of that name (no free strings here)
            Assert.Equal(written, calls.Count);
            foreach (var c in calls) Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(c.Arguments).RootElement.ValueKind);
            mostCalls = Math.Max(mostCalls, calls.Count);
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"{states} states, {ended} walks ended, at most {mostCalls} calls in one");
        Assert.True(states > 500, $"{states} states checked");
        Assert.True(ended >= 10, $"{ended} walks ended");
        Assert.True(mostCalls >= 2, $"no walk wrote more than {mostCalls} call");
    }

    private static int CountOf(string s, string part)
    {
        int n = 0;
        for (int i = s.IndexOf(part, StringComparison.Ordinal); i >= 0; i = s.IndexOf(part, i + part.Length, StringComparison.Ordinal)) n++;
        return n;
    }
}
