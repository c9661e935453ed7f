using System.Text.Json;
using Microsoft.Extensions.AI;
using OpenAI.Chat;
using Tessera.Inference.Serving;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// tool_choice required with parallel calls (OpenAI's default) through the real server: one or more calls in the Hermes
/// format, each of one of the tools with that tool's arguments, ended by the end-of-text token after a closing tag. The
/// debug model's byte 0 is its end-of-text token here (the byte tokenizer has none; without one a Hermes reply could not end
/// between calls, and the server forces one call). A random model chooses between another call and the end by its own
/// logits, so the seeds below were found by trying seeds 1, 2, ... and are the first that make the sampled reply hold at least
/// two calls; the assertions do not depend on which calls those are.
/// </summary>
public class ForcedToolCallsTests(ForcedToolCallsTests.WithEndOfText fixture) : IClassFixture<ForcedToolCallsTests.WithEndOfText>
{
    /// <summary>A server of 1,536 byte positions (the tools' description is about 800 bytes of the prompt) whose byte 0 ends a reply.</summary>
    public sealed class WithEndOfText : IAsyncLifetime
    {
        public TestServer Server { get; private set; } = null!;

        public async ValueTask InitializeAsync() => Server = await TestServer.StartAsync(context: 1536, budget: 512, stopTokens: [0]);

        public async ValueTask DisposeAsync() => await Server.DisposeAsync();
    }

    // The first seeds (trying 1, 2, ...) whose sampled forced reply holds two or more calls on this model: through the OpenAI
    // SDK (the same request whole, streamed and with parallel calls off), in process through Microsoft.Extensions.AI, and
    // through Microsoft.Extensions.AI's OpenAI client over HTTP (its tools' schemas reach the prompt as it writes them).
    private const int SdkSeed = 1;
    private const int InProcessSeed = 1;
    private const int HttpSeed = 3;

    private TestServer S => fixture.Server;
    private ChatClient Chat => S.Client().GetChatClient(TestServer.Model);

    private static readonly OpenAI.Chat.ChatTool Weather = OpenAI.Chat.ChatTool.CreateFunctionTool("get_weather", "The weather in a city.", BinaryData.FromString(
        """{"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "celsius": {"type": "boolean"}}, "required": ["city", "celsius"]}"""));
    private static readonly OpenAI.Chat.ChatTool Time = OpenAI.Chat.ChatTool.CreateFunctionTool("get_time", "The time.", BinaryData.FromString(
        """{"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}"""));

    private static ChatCompletionOptions Options(int seed, bool? parallel = null)
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 400, Temperature = 1, ToolChoice = ChatToolChoice.CreateRequiredChoice() };
#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK; the server implements it
        options.Seed = seed;
#pragma warning restore OPENAI001
        if (parallel is bool p) options.AllowParallelToolCalls = p;
        options.Tools.Add(Weather);
        options.Tools.Add(Time);
        return options;
    }

    private static readonly List<OpenAI.Chat.ChatMessage> Question = [new UserChatMessage("Weather in Oslo, and the time?")];

    /// <summary>A call of one of the tools whose arguments follow that tool's schema (the grammar chose the schema by the name).</summary>
    private static void AssertCallOfItsTool(string name, string arguments)
    {
        using var args = JsonDocument.Parse(arguments);
        var a = args.RootElement;
        switch (name)
        {
            case "get_weather":
                Assert.Equal(["city", "celsius"], a.EnumerateObject().Select(p => p.Name));
                Assert.Contains(a.GetProperty("city").GetString(), new[] { "Paris", "Oslo" });
                Assert.Contains(a.GetProperty("celsius").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
                break;
            case "get_time":
                Assert.Equal(["utc"], a.EnumerateObject().Select(p => p.Name));
                Assert.Contains(a.GetProperty("utc").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
                break;
            default:
                Assert.Fail($"'{name}' is not one of the tools");
                break;
        }
    }

    private async Task<ChatCompletion> WholeAsync(int seed, bool? parallel = null) =>
        (await Chat.CompleteChatAsync(Question, Options(seed, parallel), TestContext.Current.CancellationToken)).Value;

    [Fact]
    public async Task ARequiredChoiceGivesSeveralCallsEachOfOneOfTheToolsWithThatToolsArguments()
    {
        var completion = await WholeAsync(SdkSeed);
        TestContext.Current.TestOutputHelper?.WriteLine(string.Join("\n", completion.ToolCalls.Select(c => $"{c.FunctionName} {c.FunctionArguments}")));
        Assert.True(completion.ToolCalls.Count >= 2, $"{completion.ToolCalls.Count} calls");
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, completion.FinishReason);
        Assert.Empty(completion.Content);                       // the forced reply is calls and nothing else
        foreach (var call in completion.ToolCalls) AssertCallOfItsTool(call.FunctionName, call.FunctionArguments.ToString());
        Assert.Equal(completion.ToolCalls.Count, completion.ToolCalls.Select(c => c.Id).Distinct().Count());
        Assert.True(completion.Usage.OutputTokenCount < 400, "the reply ended by the end-of-text token, not by max_tokens");
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
    }

    /// <summary>
    /// The same request streamed: each call at its index (0, 1, ...), its id and name once, in its first update, then its
    /// arguments in pieces that join, byte for byte, into the whole response's arguments for that call.
    /// </summary>
    [Fact]
    public async Task SeveralForcedCallsStreamAtTheirIndexesAndTheirPiecesJoinIntoTheWholeResponsesArguments()
    {
        var whole = await WholeAsync(SdkSeed);
        Assert.True(whole.ToolCalls.Count >= 2, $"{whole.ToolCalls.Count} calls");

        var updates = new List<StreamingChatToolCallUpdate>();
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in Chat.CompleteChatStreamingAsync(Question, Options(SdkSeed), TestContext.Current.CancellationToken))
        {
            updates.AddRange(update.ToolCallUpdates);
            finish ??= update.FinishReason;
        }
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, finish);
        Assert.Equal(Enumerable.Range(0, whole.ToolCalls.Count), updates.Select(u => u.Index).Distinct());
        for (int i = 0; i < whole.ToolCalls.Count; i++)
        {
            var mine = updates.Where(u => u.Index == i).ToList();
            Assert.Same(mine[0], Assert.Single(mine, u => u.ToolCallId is not null));
            Assert.Equal(whole.ToolCalls[i].FunctionName, Assert.Single(mine, u => u.FunctionName is not null).FunctionName);
            string joined = string.Concat(mine.Select(u => u.FunctionArgumentsUpdate?.ToString() ?? ""));
            Assert.Equal(whole.ToolCalls[i].FunctionArguments.ToString(), joined);
        }
        // Calls stream in order: every update of call i comes before any of call i + 1.
        Assert.Equal(updates.Select(u => u.Index).OrderBy(i => i), updates.Select(u => u.Index));
    }

    /// <summary>
    /// parallel_tool_calls false: exactly one call, the reply ending at its JSON. Its grammar is the same as the several calls'
    /// up to the first call's end, so with the same seed that one call is the first of the several.
    /// </summary>
    [Fact]
    public async Task WithParallelCallsOffTheSameRequestGivesExactlyTheFirstCall()
    {
        var several = await WholeAsync(SdkSeed);
        Assert.True(several.ToolCalls.Count >= 2, $"{several.ToolCalls.Count} calls");
        var one = await WholeAsync(SdkSeed, parallel: false);
        var call = Assert.Single(one.ToolCalls);
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, one.FinishReason);
        Assert.Equal((several.ToolCalls[0].FunctionName, several.ToolCalls[0].FunctionArguments.ToString()), (call.FunctionName, call.FunctionArguments.ToString()));
    }

    /// <summary>
    /// max_tokens still cuts a forced reply: cut inside its last call's JSON (20 tokens before its end; the byte tokenizer's
    /// tokens are bytes, and a call's JSON is longer), the calls before it come whole, the cut one is not a call, and the
    /// finish reason is length, whole and streamed, so the client knows a call may be missing.
    /// </summary>
    [Fact]
    public async Task MaxTokensCutsAForcedReplyWithFinishReasonLengthAndTheWholeCallsBeforeTheCut()
    {
        var several = await WholeAsync(SdkSeed);
        Assert.True(several.ToolCalls.Count >= 2, $"{several.ToolCalls.Count} calls");
        var options = Options(SdkSeed);
        options.MaxOutputTokenCount = several.Usage.OutputTokenCount - 20;
        var cut = (await Chat.CompleteChatAsync(Question, options, TestContext.Current.CancellationToken)).Value;
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, cut.FinishReason);
        Assert.Equal(several.ToolCalls.SkipLast(1).Select(c => (c.FunctionName, c.FunctionArguments.ToString())),
            cut.ToolCalls.Select(c => (c.FunctionName, c.FunctionArguments.ToString())));

        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in Chat.CompleteChatStreamingAsync(Question, options, TestContext.Current.CancellationToken)) finish ??= update.FinishReason;
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, finish);
    }

    private static readonly AIFunction WeatherFunction = AIFunctionFactory.Create((string city, bool celsius) => "3 C", "get_weather", "The weather in a city.");
    private static readonly AIFunction TimeFunction = AIFunctionFactory.Create((bool utc) => "noon", "get_time", "The time.");

    private static ChatOptions RequireAny(int seed, bool? multiple = null) => new()
    {
        MaxOutputTokens = 400, Temperature = 1, Seed = seed, Tools = [WeatherFunction, TimeFunction], ToolMode = ChatToolMode.RequireAny,
        AllowMultipleToolCalls = multiple,
    };

    /// <summary>Microsoft.Extensions.AI's RequireAny in process: several FunctionCallContent, whole and streamed alike; AllowMultipleToolCalls false gives one.</summary>
    [Fact]
    public async Task MicrosoftExtensionsAiRequireAnyGetsSeveralFunctionCalls()
    {
        ChatOptions Options(bool? multiple = null) => RequireAny(InProcessSeed, multiple);
        IChatClient local = new TesseraChatClient(S.Engine, S.Chat, TestServer.Model);
        var response = await local.GetResponseAsync("Weather in Oslo, and the time?", Options(), TestContext.Current.CancellationToken);
        var calls = response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().ToList();
        TestContext.Current.TestOutputHelper?.WriteLine(string.Join("\n", calls.Select(c => $"{c.Name} {JsonSerializer.Serialize(c.Arguments)}")));
        Assert.True(calls.Count >= 2, $"{calls.Count} calls");
        Assert.All(calls, c => Assert.Contains(c.Name, new[] { "get_weather", "get_time" }));
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, response.FinishReason);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in local.GetStreamingResponseAsync("Weather in Oslo, and the time?", Options(), TestContext.Current.CancellationToken)) updates.Add(u);
        var streamed = updates.SelectMany(u => u.Contents).OfType<FunctionCallContent>().ToList();
        Assert.Equal(calls.Select(c => (c.Name, JsonSerializer.Serialize(c.Arguments))), streamed.Select(c => (c.Name, JsonSerializer.Serialize(c.Arguments))));

        var one = await local.GetResponseAsync("Weather in Oslo, and the time?", Options(multiple: false), TestContext.Current.CancellationToken);
        var single = Assert.Single(one.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal((calls[0].Name, JsonSerializer.Serialize(calls[0].Arguments)), (single.Name, JsonSerializer.Serialize(single.Arguments)));
    }

    /// <summary>
    /// Microsoft.Extensions.AI's OpenAI client over HTTP with RequireAny: the server's several calls arrive as several
    /// FunctionCallContent, and streamed (its client gathers each index's pieces) as the same calls.
    /// </summary>
    [Fact]
    public async Task MicrosoftExtensionsAiOverHttpGetsSeveralFunctionCallsWholeAndStreamed()
    {
        IChatClient http = S.Client().GetChatClient(TestServer.Model).AsIChatClient();
        var response = await http.GetResponseAsync("Weather in Oslo, and the time?", RequireAny(HttpSeed), TestContext.Current.CancellationToken);
        var calls = response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().ToList();
        Assert.True(calls.Count >= 2, $"{calls.Count} calls");
        Assert.All(calls, c => Assert.Contains(c.Name, new[] { "get_weather", "get_time" }));

        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in http.GetStreamingResponseAsync("Weather in Oslo, and the time?", RequireAny(HttpSeed), TestContext.Current.CancellationToken)) updates.Add(u);
        var streamed = updates.SelectMany(u => u.Contents).OfType<FunctionCallContent>().ToList();
        Assert.Equal(calls.Select(c => (c.Name, JsonSerializer.Serialize(c.Arguments))), streamed.Select(c => (c.Name, JsonSerializer.Serialize(c.Arguments))));
        Assert.Equal(calls.Count, streamed.Select(c => c.CallId).Distinct().Count());
    }
}
