using System.Text.Json;
using Tessera.Inference.Serving;
using Tessera.Inference.Tools;
using Tessera.Models.Chat;
using Tessera.Models.Tokenization;
using Xunit;

namespace Tessera.Tests.Inference.Tools;

/// <summary>
/// Tool calls in the Hermes format: finding the calls in a reply, the conversation in plain text for a template without tools
/// (the exact prompt), the tools handed to a template that reads them, and the grammar of a forced call.
/// </summary>
public class HermesToolFormatTests
{
    private static readonly JsonElement WeatherParameters = JsonDocument.Parse(
        """{"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "celsius": {"type": "boolean"}}, "required": ["city", "celsius"]}""").RootElement;

    private static readonly ChatTool[] Tools =
    [
        new("get_weather", "The weather in a city.", WeatherParameters),
        new("get_time", null, null),
    ];

    private static int _ids;

    private static string NewId() => "call_" + Interlocked.Increment(ref _ids);

    [Fact]
    public void CallsAreFoundInTheTextAndTheRestIsTheContent()
    {
        var (content, calls) = HermesToolFormat.Parse(
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_time\", \"arguments\": \"{}\"}</tool_call>",
            NewId);
        Assert.Equal("Let me look.", content);
        Assert.Equal(2, calls.Count);
        Assert.Equal("get_weather", calls[0].Name);
        Assert.Equal("Oslo", JsonDocument.Parse(calls[0].Arguments).RootElement.GetProperty("city").GetString());
        Assert.Equal(("get_time", "{}"), (calls[1].Name, calls[1].Arguments));
        Assert.NotEqual(calls[0].Id, calls[1].Id);
    }

    [Theory]
    [InlineData("no calls here", "no calls here", 0)]
    [InlineData("<tool_call>{not json}</tool_call> after", "<tool_call>{not json}</tool_call> after", 0)]   // a block that does not parse stays text
    [InlineData("<tool_call>{\"arguments\": {}}</tool_call>", "<tool_call>{\"arguments\": {}}</tool_call>", 0)]   // no name
    [InlineData("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}", null, 1)]                     // left open at the end, whole JSON
    [InlineData("<tool_call>\n{\"name\": \"get_time\", \"parameters\": {}}</tool_call>", null, 1)]        // Llama 3.1's word for them
    public void OnlyWholeCallsCount(string text, string? content, int count)
    {
        var (rest, calls) = HermesToolFormat.Parse(text, NewId);
        Assert.Equal(content, rest);
        Assert.Equal(count, calls.Count);
    }

    /// <summary>The ChatML fallback knows nothing of tools: the prompt describes them in a system turn, earlier calls are written into
    /// the assistant's text, and a tool's reply comes back as a user turn in &lt;tool_response&gt;.</summary>
    [Fact]
    public void ATemplateWithoutToolsGetsThemInPlainText()
    {
        var prompt = new ChatPrompt(new ChatFormat(ChatTemplate.Fallback, null, null, true), new ByteTokenizer());
        ChatMessage[] conversation =
        [
            new("user", "Weather in Oslo?"),
            new("assistant", "") { ToolCalls = [new ChatToolCall("c1", "get_weather", "{\"city\": \"Oslo\", \"celsius\": true}")] },
            new("tool", "{\"temp\": 3}") { ToolCallId = "c1" },
        ];
        string text = prompt.Render(conversation, [Tools[0]], forceCall: false);
        const string expected = "<|im_start|>system\nYou may call one or more functions to assist with the user query. The functions, as JSON signatures, are:\n<tools>\n" +
            "{\"name\":\"get_weather\",\"description\":\"The weather in a city.\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"enum\":[\"Paris\",\"Oslo\"]},\"celsius\":{\"type\":\"boolean\"}},\"required\":[\"city\",\"celsius\"]}}\n" +
            "</tools>\nTo call a function, write a JSON object with its name and arguments inside tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" +
            "<|im_start|>user\nWeather in Oslo?<|im_end|>\n" +
            "<|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\",\"celsius\":true}}\n</tool_call><|im_end|>\n" +
            "<|im_start|>user\n<tool_response>\n{\"temp\": 3}\n</tool_response><|im_end|>\n" +
            "<|im_start|>assistant\n";
        Assert.Equal(expected, text);
        Assert.Equal(expected + "<tool_call>\n", prompt.Render(conversation, [Tools[0]], forceCall: true));
    }

    /// <summary>A template that reads tools gets OpenAI's list, and each call's arguments as a mapping it can print with tojson.</summary>
    [Fact]
    public void ATemplateThatReadsToolsGetsThemAndTheCalls()
    {
        const string source = "{% for t in tools %}[{{ t.function.name }}:{{ t.function.parameters | tojson }}]{% endfor %}" +
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if m.tool_calls %}{% for c in m.tool_calls %}{call {{ c.function.name }} {{ c.function.arguments | tojson }}}{% endfor %}{% endif %}" +
            "{% if m.tool_call_id %}(re {{ m.tool_call_id }}){% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        var prompt = new ChatPrompt(new ChatFormat(ChatTemplate.Parse(source), null, null, false), new ByteTokenizer());
        string text = prompt.Render(
        [
            new("user", "hi"),
            new("assistant", "") { ToolCalls = [new ChatToolCall("c1", "get_time", "{\"zone\": \"UTC\"}")] },
            new("tool", "12:00") { ToolCallId = "c1" },
        ], [Tools[1]]);
        Assert.Equal("[get_time:{\"type\": \"object\"}]<user>hi<assistant>{call get_time {\"zone\": \"UTC\"}}<tool>12:00(re c1)<assistant>", text);
    }

    [Fact]
    public void AForcedCallsGrammarTakesTheToolsNamesAndTheArgumentsOfTheToolTheNameChose()
    {
        static bool Takes(Tessera.Inference.Constraints.JsonGrammar g, string json)
        {
            var r = g.Start();
            var bytes = System.Text.Encoding.UTF8.GetBytes(json);
            if (!r.Accepts(bytes)) return false;
            r.Advance(bytes);
            return r.IsComplete;
        }
        var named = HermesToolFormat.ForcedCall(Tools, new ToolChoice(ToolChoiceMode.Named, "get_weather"));
        Assert.True(Takes(named, "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\",\"celsius\":false}}"));
        Assert.False(Takes(named, "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\",\"celsius\":false}}"));
        Assert.False(Takes(named, "{\"name\":\"get_time\",\"arguments\":{}}"));
        var required = HermesToolFormat.ForcedCall(Tools, new ToolChoice(ToolChoiceMode.Required));
        Assert.True(Takes(required, "{\"name\":\"get_time\",\"arguments\":{\"anything\":[1]}}"));   // get_time has no schema: any object
        Assert.False(Takes(required, "{\"name\":\"get_weather\",\"arguments\":{\"anything\":[1]}}"));  // get_weather's schema, chosen by the name
        Assert.True(Takes(required, "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\",\"celsius\":true}}"));
        Assert.False(Takes(required, "{\"name\":\"get_date\",\"arguments\":{}}"));
        Assert.Throws<ArgumentException>(() => HermesToolFormat.ForcedCall(Tools, new ToolChoice(ToolChoiceMode.Named, "nope")));
    }
}
