using System.Text.Json;
using Microsoft.Extensions.AI;
using OpenAI.Chat;
using Tessera.Inference.Serving;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// Tool calls as clients make them, on the random debug model (which never calls a tool unprompted, so the calls are forced:
/// tool_choice required or named): the OpenAI SDK, whole and streamed, a second turn that carries the call and the tool's
/// reply, and Microsoft.Extensions.AI's function calls over HTTP and in process; bad tool fields are 400s naming them.
/// </summary>
public class ToolCallTests(ToolCallTests.LongContext fixture) : IClassFixture<ToolCallTests.LongContext>
{
    /// <summary>A server whose model holds 1,536 byte positions: the tools' description alone is about 800 bytes of the prompt.</summary>
    public sealed class LongContext : IAsyncLifetime
    {
        public TestServer Server { get; private set; } = null!;

        public async ValueTask InitializeAsync() => Server = await TestServer.StartAsync(context: 1536, budget: 512);

        public async ValueTask DisposeAsync() => await Server.DisposeAsync();
    }

    private TestServer S => fixture.Server;
    private ChatClient Chat => S.Client().GetChatClient(TestServer.Model);

    // Bounded arguments (an enum and a boolean), so the random model's forced call ends well within max_tokens.
    private static readonly ChatTool Weather = ChatTool.CreateFunctionTool("get_weather", "The weather in a city.", BinaryData.FromString(
        """{"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "celsius": {"type": "boolean"}}, "required": ["city", "celsius"]}"""));
    private static readonly ChatTool Time = ChatTool.CreateFunctionTool("get_time", "The time.", BinaryData.FromString(
        """{"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}"""));

    private static ChatCompletionOptions Options(ChatToolChoice choice)
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 80, Temperature = 0, ToolChoice = choice };
        options.Tools.Add(Weather);
        options.Tools.Add(Time);
        return options;
    }

    private static void AssertWeatherCall(string name, string arguments)
    {
        Assert.Equal("get_weather", name);
        using var args = JsonDocument.Parse(arguments);
        Assert.Contains(args.RootElement.GetProperty("city").GetString(), new[] { "Paris", "Oslo" });
        Assert.Contains(args.RootElement.GetProperty("celsius").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
    }

    [Fact]
    public async Task ANamedToolChoiceGivesThatCallWholeAndStreamedAndASecondTurnReadsTheReply()
    {
        var messages = new List<OpenAI.Chat.ChatMessage> { new UserChatMessage("Weather in Oslo?") };
        var completion = (await Chat.CompleteChatAsync(messages, Options(ChatToolChoice.CreateFunctionChoice("get_weather")), TestContext.Current.CancellationToken)).Value;
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, completion.FinishReason);
        var call = Assert.Single(completion.ToolCalls);
        AssertWeatherCall(call.FunctionName, call.FunctionArguments.ToString());

        string? name = null;
        var arguments = new System.Text.StringBuilder();
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in Chat.CompleteChatStreamingAsync(messages, Options(ChatToolChoice.CreateFunctionChoice("get_weather")), TestContext.Current.CancellationToken))
        {
            foreach (var t in update.ToolCallUpdates) { name ??= t.FunctionName; arguments.Append(t.FunctionArgumentsUpdate?.ToString()); }
            finish ??= update.FinishReason;
        }
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, finish);
        AssertWeatherCall(name!, arguments.ToString());
        Assert.Equal(call.FunctionArguments.ToString(), arguments.ToString());   // greedy: the same call both ways

        // The second turn: the call and the tool's reply go back; with tool_choice none the model answers in text.
        messages.Add(new AssistantChatMessage(completion));
        messages.Add(new ToolChatMessage(call.Id, """{"temp": 3}"""));
        var answer = (await Chat.CompleteChatAsync(messages, Options(ChatToolChoice.CreateNoneChoice()), TestContext.Current.CancellationToken)).Value;
        Assert.Empty(answer.ToolCalls);
        Assert.NotEqual(OpenAI.Chat.ChatFinishReason.ToolCalls, answer.FinishReason);
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
    }

    /// <summary>
    /// With tools the model may call (auto) but a reply of text, the text streams as it is written, in several deltas, and joins
    /// into what the whole reply says.
    /// </summary>
    [Fact]
    public async Task AnAutoReplyOfTextStreamsAsItIsWritten()
    {
        var options = Options(ChatToolChoice.CreateAutoChoice());
        var whole = (await Chat.CompleteChatAsync([new UserChatMessage("Say something.")], options, TestContext.Current.CancellationToken)).Value;
        Assert.Empty(whole.ToolCalls);                                 // the random model writes no call
        int deltas = 0;
        var text = new System.Text.StringBuilder();
        await foreach (var update in Chat.CompleteChatStreamingAsync([new UserChatMessage("Say something.")], Options(ChatToolChoice.CreateAutoChoice()),
            TestContext.Current.CancellationToken))
            foreach (var part in update.ContentUpdate) { text.Append(part.Text); if (part.Text.Length > 0) deltas++; }
        Assert.Equal(whole.Content[0].Text, text.ToString());
        Assert.True(deltas > 5, $"{deltas} deltas: the text did not stream");
    }

    /// <summary>This server's byte vocabulary has no end-of-text token, so a Hermes reply could not end between calls: required gives one (ForcedToolCallsTests has one or more).</summary>
    [Fact]
    public async Task ARequiredToolChoiceGivesACallOfOneOfTheTools()
    {
        var completion = (await Chat.CompleteChatAsync([new UserChatMessage("Anything.")], Options(ChatToolChoice.CreateRequiredChoice()),
            TestContext.Current.CancellationToken)).Value;
        var call = Assert.Single(completion.ToolCalls);
        Assert.Contains(call.FunctionName, new[] { "get_weather", "get_time" });
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(call.FunctionArguments.ToString()).RootElement.ValueKind);
    }

    [Fact]
    public async Task FunctionCallsReachMicrosoftExtensionsAiOverHttpAndInProcess()
    {
        var tool = AIFunctionFactory.Create((bool celsius) => celsius ? "3 C" : "37 F", "get_weather", "The weather.");
        var options = new ChatOptions { MaxOutputTokens = 60, Temperature = 0, Tools = [tool], ToolMode = ChatToolMode.RequireSpecific("get_weather") };
        IChatClient http = S.Client().GetChatClient(TestServer.Model).AsIChatClient();
        IChatClient local = new TesseraChatClient(S.Engine, S.Chat, TestServer.Model);
        foreach (var client in new[] { http, local })
        {
            var response = await client.GetResponseAsync("Weather?", options, TestContext.Current.CancellationToken);
            var call = Assert.Single(response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
            Assert.Equal("get_weather", call.Name);
            Assert.True(call.Arguments!.ContainsKey("celsius"));
            Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, response.FinishReason);
        }

        // FunctionInvokingChatClient runs the function and sends its result back; the model's answer ends the exchange.
        using var invoking = new ChatClientBuilder(local).UseFunctionInvocation(configure: c => c.MaximumIterationsPerRequest = 2).Build();
        var final = await invoking.GetResponseAsync("Weather?", options, TestContext.Current.CancellationToken);
        Assert.Contains(final.Messages, m => m.Contents.OfType<FunctionResultContent>().Any(r => r.Result?.ToString() is "3 C" or "37 F"));
    }

    /// <summary>
    /// A forced call streamed the way OpenAI streams one: its id and name once, in the first update, then its arguments in
    /// several pieces that join, byte for byte, into the arguments the whole response gives for the same seed (sampled, so the
    /// arguments are not the same every time); one call at index 0; finish reason tool calls.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task AForcedCallStreamsItsNameOnceAndItsArgumentsInPiecesThatJoinIntoTheWholeResponses(bool parallel)
    {
        ChatCompletionOptions Seeded()
        {
            var options = Options(ChatToolChoice.CreateFunctionChoice("get_weather"));
            options.Temperature = 1;
#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK; the server implements it
            options.Seed = 11;
#pragma warning restore OPENAI001
            if (!parallel) options.AllowParallelToolCalls = false;
            return options;
        }
        var whole = (await Chat.CompleteChatAsync([new UserChatMessage("Weather?")], Seeded(), TestContext.Current.CancellationToken)).Value;
        var call = Assert.Single(whole.ToolCalls);

        var updates = new List<StreamingChatToolCallUpdate>();
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in Chat.CompleteChatStreamingAsync([new UserChatMessage("Weather?")], Seeded(), TestContext.Current.CancellationToken))
        {
            updates.AddRange(update.ToolCallUpdates);
            finish ??= update.FinishReason;
        }
        Assert.Equal(OpenAI.Chat.ChatFinishReason.ToolCalls, finish);
        Assert.All(updates, u => Assert.Equal(0, u.Index));
        Assert.Equal("get_weather", Assert.Single(updates, u => u.FunctionName is not null).FunctionName);
        Assert.Same(updates[0], Assert.Single(updates, u => u.ToolCallId is not null));
        var pieces = updates.Select(u => u.FunctionArgumentsUpdate?.ToString() ?? "").Where(p => p.Length > 0).ToList();
        Assert.True(pieces.Count > 1, $"{pieces.Count} pieces: the arguments did not stream");
        Assert.Equal(call.FunctionArguments.ToString(), string.Concat(pieces));
        AssertWeatherCall("get_weather", string.Concat(pieces));
    }

    /// <summary>
    /// The wire itself: the first tool-call delta has index, id, type and name with arguments ""; a later one has only index and
    /// a piece of the arguments (the other fields absent, not null). Logprobs and usage still arrive.
    /// </summary>
    [Fact]
    public async Task TheToolCallDeltasHaveOpenAisShapeOnTheWire()
    {
        string body = $$$$"""
            {"model": "{{{{TestServer.Model}}}}", "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 80, "temperature": 0,
             "stream": true, "stream_options": {"include_usage": true}, "logprobs": true,
             "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"]}}}],
             "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
            """;
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") };
        using var response = await S.Http.SendAsync(request, TestContext.Current.CancellationToken);
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        var chunks = text.Split("\n\n").Where(e => e.StartsWith("data: {", StringComparison.Ordinal))
            .Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.Clone()).ToList();
        var deltas = chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0)
            .Select(c => c.GetProperty("choices")[0]).ToList();
        var calls = deltas.Where(d => d.GetProperty("delta").TryGetProperty("tool_calls", out _))
            .Select(d => Assert.Single(d.GetProperty("delta").GetProperty("tool_calls").EnumerateArray())).ToList();
        Assert.True(calls.Count > 2, $"{calls.Count} tool-call deltas");

        var first = calls[0];
        Assert.Equal(0, first.GetProperty("index").GetInt32());
        Assert.StartsWith("call_", first.GetProperty("id").GetString());
        Assert.Equal("function", first.GetProperty("type").GetString());
        Assert.Equal("get_weather", first.GetProperty("function").GetProperty("name").GetString());
        Assert.Equal("", first.GetProperty("function").GetProperty("arguments").GetString());
        foreach (var later in calls.Skip(1))
        {
            Assert.Equal(["index", "function"], later.EnumerateObject().Select(p => p.Name));
            Assert.Equal(0, later.GetProperty("index").GetInt32());
            Assert.Equal(["arguments"], later.GetProperty("function").EnumerateObject().Select(p => p.Name));
        }
        string arguments = string.Concat(calls.Select(c => c.GetProperty("function").GetProperty("arguments").GetString()));
        Assert.Contains(JsonDocument.Parse(arguments).RootElement.GetProperty("city").GetString(), new[] { "Paris", "Oslo" });

        Assert.Equal("tool_calls", deltas[^1].GetProperty("finish_reason").GetString());
        int logprobs = deltas.Where(d => d.TryGetProperty("logprobs", out var l) && l.ValueKind == JsonValueKind.Object)
            .Sum(d => d.GetProperty("logprobs").GetProperty("content").GetArrayLength());
        var usage = chunks[^1].GetProperty("usage");
        Assert.Equal(usage.GetProperty("completion_tokens").GetInt32(), logprobs);   // every token's logprob, once
    }

    /// <summary>
    /// Microsoft.Extensions.AI's convention for a streamed call is one whole FunctionCallContent: its OpenAI client gathers the
    /// pieces the server streams, and the in-process client yields the call when the reply ends.
    /// </summary>
    [Fact]
    public async Task MicrosoftExtensionsAiGetsEachStreamedCallWhole()
    {
        var tool = AIFunctionFactory.Create((bool celsius) => celsius ? "3 C" : "37 F", "get_weather", "The weather.");
        var options = new ChatOptions { MaxOutputTokens = 60, Temperature = 0, Tools = [tool], ToolMode = ChatToolMode.RequireSpecific("get_weather") };
        IChatClient http = S.Client().GetChatClient(TestServer.Model).AsIChatClient();
        IChatClient local = new TesseraChatClient(S.Engine, S.Chat, TestServer.Model);
        string? previous = null;
        foreach (var client in new[] { http, local })
        {
            var updates = new List<ChatResponseUpdate>();
            await foreach (var update in client.GetStreamingResponseAsync("Weather?", options, TestContext.Current.CancellationToken)) updates.Add(update);
            var call = Assert.Single(updates.SelectMany(u => u.Contents).OfType<FunctionCallContent>());
            Assert.Equal("get_weather", call.Name);
            string arguments = JsonSerializer.Serialize(call.Arguments);
            Assert.True(call.Arguments!.ContainsKey("celsius"), arguments);
            Assert.Contains(updates, u => u.FinishReason == Microsoft.Extensions.AI.ChatFinishReason.ToolCalls);
            if (previous is not null) Assert.Equal(previous, arguments);           // greedy: the same call over HTTP and in process
            previous = arguments;
        }
    }

    [Theory]
    [InlineData(""", "tool_choice": "required" """, "no tools are given", "tool_choice")]
    [InlineData(""", "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}} """, "'g', which is not among the tools", "tool_choice")]
    [InlineData(""", "tools": [{"type": "function"}] """, "tools[0] must be", "tools")]
    [InlineData(""", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"pattern": "x"}}}}}], "tool_choice": "required" """, "'pattern'", "tools")]
    [InlineData(""", "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes" """, "is not one of", "tool_choice")]
    public async Task BadToolFieldsAreRefusedNamingThem(string fields, string message, string param)
    {
        var (status, json, _) = await S.PostAsync("v1/chat/completions",
            $$"""{"model": "{{TestServer.Model}}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4{{fields}}}""");
        Assert.Equal(400, status);
        Assert.Equal(param, json.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains(message, json.GetProperty("error").GetProperty("message").GetString());
    }
}
