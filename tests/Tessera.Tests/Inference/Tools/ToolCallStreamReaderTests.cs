using System.Text;
using Tessera.Inference.Tools;
using Tessera.Models.Chat;
using Xunit;

namespace Tessera.Tests.Inference.Tools;

/// <summary>
/// The incremental reader against <see cref="ToolCallFormat.Parse"/>, the whole-reply path's parser: every split of a reply into
/// two or three pieces (at every char, so at every token boundary a tokenizer could make, and between the halves of a surrogate
/// pair) gives Parse's calls, with each call's pieces joining into Parse's arguments byte for byte and every piece, when sent,
/// the start of them; a malformed call is not confirmed and gets no piece past the point where its JSON broke.
/// </summary>
public class ToolCallStreamReaderTests
{
    private const string Nested = """{"q": "a {b} \"c\" \\ d }{ [", "n": [1, {"x": "}"}, -2.5e3, true, null], "u": "héllo ☃ 😀 \u00e9\n"}""";

    public static TheoryData<string, string, bool> WellFormed() => new()
    {
        { "hermes", "Let me look.\n<tool_call>\n{\"name\": \"search\", \"arguments\": " + Nested + "}\n</tool_call>", false },
        { "hermes", "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"k\": \"<v/>\"}}\n</tool_call>", false },
        { "hermes", "{\"name\": \"get_weather\", \"arguments\": " + Nested + "}", true },
        { "hermes", "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": \\\"\\u00e9\\\"}\"}</tool_call>", false },
        { "hermes", "<tool_call>{\"arguments\": {\"a\": [1, 2]}, \"name\": \"f\"}</tool_call> and then", false },
        { "hermes", "<tool_call>{\"name\": \"f\"}</tool_call>", false },
        { "hermes", "Open at the end: <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}", false },
        { "llama3-json", "<|python_tag|>{\"name\": \"f\", \"parameters\": " + Nested + "}", false },
        { "llama3-json", "  {\"name\": \"f\", \"parameters\": {\"a\": \"b\"}}\n", true },
        { "mistral", "Sure. [TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {\"y\": \"]}\"}}]", false },
        { "mistral", "{\"name\": \"a\", \"arguments\": " + Nested + "}", true },
        // Forced replies of several calls, as their grammars write them after the forced opening.
        { "hermes", "{\"name\": \"a\", \"arguments\": " + Nested + "}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"k\": [1]}}\n</tool_call>", true },
        { "hermes", "{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"y\": \"</\"}}\n</tool_call>", true },
        { "mistral", "{\"name\": \"a\", \"arguments\": " + Nested + "}, {\"name\": \"b\", \"arguments\": {\"y\": \"]}\"}}]", true },
    };

    private static ToolCallFormat Format(string name) => name switch
    {
        "hermes" => ToolCallFormat.Hermes,
        "llama3-json" => ToolCallFormat.LlamaJson,
        _ => ToolCallFormat.Mistral,
    };

    /// <summary>What a stream of <paramref name="pieces"/> sent: its content, each call's name and joined arguments, and the reader.</summary>
    private static (string Content, List<(string Id, string Name, string Arguments)> Calls, ToolCallStreamReader Reader) Stream(
        ToolCallFormat format, bool forced, IEnumerable<string> pieces, IReadOnlyList<ChatToolCall>? parsed = null, int maxCalls = int.MaxValue)
    {
        int ids = 0;
        var reader = new ToolCallStreamReader(format, forced, maxCalls, () => "id" + ids++);
        var content = new StringBuilder();
        var calls = new List<(string Id, string Name, StringBuilder Arguments)>();
        void Take(IEnumerable<ToolCallStreamEvent> events)
        {
            foreach (var e in events)
            {
                switch (e.Kind)
                {
                    case ToolCallStreamEventKind.Content: content.Append(e.Text); break;
                    case ToolCallStreamEventKind.CallStarted:
                        Assert.Equal(calls.Count, e.Index);
                        calls.Add((e.Id!, e.Name!, new StringBuilder()));
                        break;
                    case ToolCallStreamEventKind.Arguments:
                        calls[e.Index].Arguments.Append(e.Text);
                        // Certain when sent: what was sent of a call begins Parse's arguments for it.
                        if (parsed is not null) Assert.StartsWith(calls[e.Index].Arguments.ToString(), parsed[e.Index].Arguments, StringComparison.Ordinal);
                        break;
                }
            }
        }
        foreach (var piece in pieces) Take(reader.Append(piece));
        Take(reader.Finish());
        return (content.ToString(), calls.Select(c => (c.Id, c.Name, c.Arguments.ToString())).ToList(), reader);
    }

    private static IEnumerable<string[]> Splits(string text)
    {
        yield return [text];
        for (int i = 0; i <= text.Length; i++)
        {
            yield return [text[..i], text[i..]];
            for (int j = i; j <= text.Length; j += 3) yield return [text[..i], text[i..j], text[j..]];
        }
    }

    private static string Squash(string? s) => string.Concat((s ?? "").Where(c => !char.IsWhiteSpace(c)));

    [Theory]
    [MemberData(nameof(WellFormed))]
    public void EverySplitGivesParsesCallsWithTheirArgumentsByteForByte(string formatName, string text, bool forced)
    {
        var format = Format(formatName);
        var (content, parsed) = format.Parse(text, forced, () => "");
        Assert.NotEmpty(parsed);
        foreach (var pieces in Splits(text))
        {
            var (streamed, calls, reader) = Stream(format, forced, pieces, parsed);
            Assert.Equal(parsed.Select(c => (c.Name, c.Arguments)), calls.Select(c => (c.Name, c.Arguments)));
            Assert.Equal(calls.Select(c => c.Id), reader.Calls.Select(c => c.Id));
            Assert.Equal(0, reader.Unconfirmed);
            Assert.Equal(Squash(content), Squash(streamed));          // the stream sends the text before a call untrimmed
        }
    }

    [Fact]
    public void ArgumentsStreamInPiecesAsTheyAreWrittenAndTheNameComesFirst()
    {
        const string text = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"one two three\"}}</tool_call>";
        var reader = new ToolCallStreamReader(ToolCallFormat.Hermes, forced: false);
        var events = new List<ToolCallStreamEvent>();
        for (int i = 0; i < text.Length; i += 4) events.AddRange(reader.Append(text.Substring(i, Math.Min(4, text.Length - i))));
        events.AddRange(reader.Finish());
        Assert.Equal(ToolCallStreamEventKind.CallStarted, events[0].Kind);
        Assert.Equal("f", events[0].Name);
        var pieces = events.Where(e => e.Kind == ToolCallStreamEventKind.Arguments).Select(e => e.Text).ToList();
        Assert.True(pieces.Count > 5, $"{pieces.Count} pieces");
        Assert.Equal("{\"a\": \"one two three\"}", string.Concat(pieces));
        Assert.Equal(ToolCallStreamEventKind.CallEnded, events[^1].Kind);
    }

    [Fact]
    public void TextBeforeACallStreamsAndNoPartOfTheTagGoesWithIt()
    {
        var reader = new ToolCallStreamReader(ToolCallFormat.Hermes, forced: false);
        Assert.Equal("Let me ", Assert.Single(reader.Append("Let me ")).Text);
        Assert.Equal("check", Assert.Single(reader.Append("check<tool")).Text);     // "<tool" may open a call: held
        Assert.Empty(reader.Append("_call>{\"name\""));
        var started = Assert.Single(reader.Append(": \"f\", "));
        Assert.Equal(ToolCallStreamEventKind.CallStarted, started.Kind);
        var rest = reader.Append("\"arguments\": {}}</tool_call>").Concat(reader.Finish()).ToList();
        Assert.Equal("{}", string.Concat(rest.Where(e => e.Kind == ToolCallStreamEventKind.Arguments).Select(e => e.Text)));
        Assert.Equal("f", Assert.Single(reader.Calls).Name);
    }

    [Fact]
    public void WithOneCallAllowedOnlyTheFirstIsSent()
    {
        const string text = "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": 1}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
        var (_, calls, reader) = Stream(ToolCallFormat.Hermes, false, [text[..40], text[40..]], maxCalls: 1);
        Assert.Equal(("a", "{\"x\": 1}"), (Assert.Single(calls).Name, calls[0].Arguments));
        Assert.Equal("a", Assert.Single(reader.Calls).Name);
    }

    [Theory]
    [InlineData("<tool_call>{\"nme\": \"f\", \"arguments\": {}}</tool_call> so", 0)]                        // no name: never announced
    [InlineData("<tool_call>not json</tool_call>", 0)]
    [InlineData("<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>", 0)]
    [InlineData("<tool_call>{\"name\": \"f\", \"arguments\": 7}</tool_call>", 1)]                           // announced, then broken
    [InlineData("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}} oops</tool_call>", 1)]
    [InlineData("<tool_call>{\"name\": \"f\", \"arguments\": {\"h\": \"</tool_call>\"}}</tool_call>", 1)]   // Parse ends the call at the tag
    [InlineData("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [tru", 1)]                             // cut short
    public void AMalformedCallFollowsParseAndGetsNoPieceAfterItBroke(string text, int unconfirmed)
    {
        var (content, parsed) = ToolCallFormat.Hermes.Parse(text, false, () => "");
        Assert.Empty(parsed);
        foreach (var pieces in Splits(text))
        {
            var (streamed, calls, reader) = Stream(ToolCallFormat.Hermes, false, pieces);
            Assert.Empty(reader.Calls);
            Assert.Equal(unconfirmed, reader.Unconfirmed);
            Assert.Equal(content, streamed);                               // all the text, as the whole-reply path gives it
            foreach (var call in calls)
            {
                // What was sent is JSON text up to where it broke, never the junk after it.
                Assert.DoesNotContain("oops", call.Arguments);
                Assert.DoesNotContain("</tool_call>", call.Arguments);
            }
        }
    }

    [Fact]
    public void AMalformedCallBeforeAGoodOneLeavesTheGoodOneWhole()
    {
        const string text = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}} oops</tool_call>\n<tool_call>{\"name\": \"g\", \"arguments\": {\"b\": 2}}</tool_call>";
        var parsed = ToolCallFormat.Hermes.Parse(text, false, () => "").Calls;
        var (_, calls, reader) = Stream(ToolCallFormat.Hermes, false, [text[..30], text[30..90], text[90..]]);
        Assert.Equal(("g", "{\"b\": 2}"), (Assert.Single(parsed).Name, parsed[0].Arguments));
        Assert.Equal(["f", "g"], calls.Select(c => c.Name));               // f was announced before it broke
        Assert.Equal("{\"b\": 2}", calls[1].Arguments);
        Assert.Equal(1, reader.Unconfirmed);
        Assert.Equal(calls[1].Id, Assert.Single(reader.Calls).Id);
    }
}
