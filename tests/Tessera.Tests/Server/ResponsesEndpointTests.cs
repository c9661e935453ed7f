#pragma warning disable OPENAI001 // the SDK marks its Responses client experimental; the server implements what it sends
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using OpenAI.Chat;
using OpenAI.Responses;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// POST /v1/responses (OpenAI's Responses API) through the official OpenAI SDK's <see cref="ResponsesClient"/> and
/// Microsoft.Extensions.AI over it, against the chat endpoint on the same engine: the random debug model answers greedily
/// (temperature 0), so the same conversation gives the same text and the same token counts both ways, exactly. The byte model
/// has no end-of-text token, so a free reply runs to max_output_tokens (status incomplete); a structured-output reply ends by
/// itself when its document is whole (status completed).
/// </summary>
public class ResponsesEndpointTests(ResponsesEndpointTests.LongContext fixture) : IClassFixture<ResponsesEndpointTests.LongContext>
{
    /// <summary>A server whose model holds 1,536 byte positions (a tool's description is a few hundred bytes of the prompt).</summary>
    public sealed class LongContext : IAsyncLifetime
    {
        public TestServer Server { get; private set; } = null!;

        public async ValueTask InitializeAsync() => Server = await TestServer.StartAsync(context: 1536, budget: 512);

        public async ValueTask DisposeAsync() => await Server.DisposeAsync();
    }

    private TestServer S => fixture.Server;
    private ResponsesClient Responses => S.Client().GetResponsesClient();
    private ChatClient Chat => S.Client().GetChatClient(TestServer.Model);
    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    private const string Instructions = "Answer in one word.";
    private const string Question = "Name a colour";

    private static CreateResponseOptions Options(int maxOutputTokens = 16, params ResponseItem[] input)
    {
        var options = new CreateResponseOptions { Model = TestServer.Model, Instructions = Instructions, MaxOutputTokenCount = maxOutputTokens, Temperature = 0 };
        foreach (var item in input.Length > 0 ? input : [ResponseItem.CreateUserMessageItem(Question)]) options.InputItems.Add(item);
        return options;
    }

    private async Task<ChatCompletion> ChatAnswer(int maxTokens = 16) =>
        (await Chat.CompleteChatAsync([new SystemChatMessage(Instructions), new UserChatMessage(Question)],
            new ChatCompletionOptions { MaxOutputTokenCount = maxTokens, Temperature = 0 }, Cancel)).Value;

    [Fact]
    public async Task AGreedyResponseIsTheChatAnswerWithTheSameUsageAndIsIncompleteAtTheTokenLimit()
    {
        double finished = await S.MetricAsync("tessera_requests_total{outcome=\"finished\"}");
        ResponseResult response = await Responses.CreateResponseAsync(Options(), Cancel);
        var chat = await ChatAnswer();

        Assert.StartsWith("resp_", response.Id);
        Assert.Equal(TestServer.Model, response.Model);
        Assert.Equal(chat.Content[0].Text, response.GetOutputText());
        var message = Assert.IsAssignableFrom<MessageResponseItem>(Assert.Single(response.OutputItems));
        Assert.Equal(chat.Content[0].Text, Assert.Single(message.Content).Text);
        Assert.Equal(chat.Usage.InputTokenCount, response.Usage.InputTokenCount);
        Assert.Equal(16, response.Usage.OutputTokenCount);
        Assert.Equal(chat.Usage.OutputTokenCount, response.Usage.OutputTokenCount);
        Assert.Equal(chat.Usage.TotalTokenCount, response.Usage.TotalTokenCount);
        Assert.Equal(0, response.Usage.OutputTokenDetails.ReasoningTokenCount);
        // The byte model never ends a reply by itself: max_output_tokens cut it.
        Assert.Equal(ResponseStatus.Incomplete, response.Status);
        Assert.Equal(ResponseIncompleteStatusReason.MaxOutputTokens, response.IncompleteStatusDetails.Reason);
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, chat.FinishReason);
        Assert.True(await S.MetricAsync("tessera_requests_total{outcome=\"finished\"}") >= finished + 2);   // counted as chat's are
    }

    [Fact]
    public async Task InstructionsAreTheSystemTurnPlacedFirst()
    {
        var without = new CreateResponseOptions { Model = TestServer.Model, MaxOutputTokenCount = 4, Temperature = 0 };
        without.InputItems.Add(ResponseItem.CreateUserMessageItem(Question));
        ResponseResult bare = await Responses.CreateResponseAsync(without, Cancel);
        ResponseResult instructed = await Responses.CreateResponseAsync(Options(4), Cancel);
        // ChatML: "<|im_start|>system\n" + instructions + "<|im_end|>\n" before the user's turn, one token a byte.
        Assert.Equal(bare.Usage.InputTokenCount + "<|im_start|>system\n".Length + Instructions.Length + "<|im_end|>\n".Length, instructed.Usage.InputTokenCount);
        // A system message item in the input is the same turn as instructions.
        ResponseResult asItem = await Responses.CreateResponseAsync(new CreateResponseOptions
        {
            Model = TestServer.Model, MaxOutputTokenCount = 4, Temperature = 0,
            InputItems = { ResponseItem.CreateSystemMessageItem(Instructions), ResponseItem.CreateUserMessageItem(Question) },
        }, Cancel);
        Assert.Equal(instructed.GetOutputText(), asItem.GetOutputText());
        Assert.Equal(instructed.Usage.InputTokenCount, asItem.Usage.InputTokenCount);
    }

    [Fact]
    public async Task StreamedDeltasJoinIntoTheWholeTextInTheEventOrderOfTheApi()
    {
        ResponseResult whole = await Responses.CreateResponseAsync(Options(24), Cancel);
        var streaming = Options(24);
        streaming.StreamingEnabled = true;
        var text = new StringBuilder();
        var kinds = new List<string>();
        int sequence = -1;
        ResponseResult? last = null;
        await foreach (var update in await Responses.CreateResponseStreamingAsync(streaming, Cancel))
        {
            Assert.Equal(sequence + 1, update.SequenceNumber);
            sequence = update.SequenceNumber;
            kinds.Add(update.GetType().Name);
            if (update is StreamingResponseOutputTextDeltaUpdate delta) text.Append(delta.Delta);
            if (update is StreamingResponseIncompleteUpdate incomplete) last = incomplete.Response;
        }
        Assert.Equal(whole.GetOutputText(), text.ToString());
        string[] head = ["StreamingResponseCreatedUpdate", "StreamingResponseInProgressUpdate", "StreamingResponseOutputItemAddedUpdate", "StreamingResponseContentPartAddedUpdate"];
        string[] tail = ["StreamingResponseOutputTextDoneUpdate", "StreamingResponseContentPartDoneUpdate", "StreamingResponseOutputItemDoneUpdate", "StreamingResponseIncompleteUpdate"];
        Assert.Equal(head, kinds.Take(4));
        Assert.Equal(tail, kinds.TakeLast(4));
        Assert.All(kinds.Skip(4).SkipLast(4), k => Assert.Equal("StreamingResponseOutputTextDeltaUpdate", k));
        Assert.NotNull(last);
        Assert.Equal(ResponseStatus.Incomplete, last.Status);
        Assert.Equal(whole.GetOutputText(), last.GetOutputText());
        Assert.Equal(whole.Usage.OutputTokenCount, last.Usage.OutputTokenCount);
    }

    /// <summary>On the wire: "event:" and "data:" lines, sequence numbers 0, 1, ..., response.completed last and no [DONE] line.</summary>
    [Fact]
    public async Task AStreamOnTheWireEndsWithResponseCompletedAndNoDoneLine()
    {
        // json_object: the constrained reply ends by itself when its document is whole, so the response completes.
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/responses")
        {
            Content = new StringContent($$"""{"model": "{{TestServer.Model}}", "input": "A pet as JSON", "max_output_tokens": 200, "temperature": 0, "stream": true, "text": {"format": {"type": "json_object"} } }""",
                Encoding.UTF8, "application/json"),
        };
        using var response = await S.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Cancel);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var events = (await response.Content.ReadAsStringAsync(Cancel)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.DoesNotContain(events, e => e.Contains("[DONE]"));
        var types = new List<string>();
        for (int i = 0; i < events.Length; i++)
        {
            var lines = events[i].Split('\n');
            Assert.StartsWith("event: ", lines[0]);
            Assert.StartsWith("data: ", lines[1]);
            using var data = JsonDocument.Parse(lines[1]["data: ".Length..]);
            Assert.Equal(lines[0]["event: ".Length..], data.RootElement.GetProperty("type").GetString());
            Assert.Equal(i, data.RootElement.GetProperty("sequence_number").GetInt32());
            types.Add(data.RootElement.GetProperty("type").GetString()!);
        }
        Assert.Equal(["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"], types.Take(4));
        Assert.Equal(["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"], types.TakeLast(4));
        using var completed = JsonDocument.Parse(events[^1].Split('\n')[1]["data: ".Length..]);
        var body = completed.RootElement.GetProperty("response");
        Assert.Equal("completed", body.GetProperty("status").GetString());
        string text = body.GetProperty("output")[0].GetProperty("content")[0].GetProperty("text").GetString()!;
        using var document = JsonDocument.Parse(text);                  // the whole document the grammar allowed
        Assert.Equal(JsonValueKind.Object, document.RootElement.ValueKind);
    }

    private const string PetSchema = """
        {"type": "object", "properties": {"indoor": {"type": "boolean"}, "colour": {"enum": ["red", "green"]}},
         "required": ["indoor", "colour"], "additionalProperties": false}
        """;

    [Fact]
    public async Task AJsonSchemaTextFormatGivesACompletedDocumentOfTheSchema()
    {
        var options = Options(120);
        options.TextOptions = new ResponseTextOptions { TextFormat = ResponseTextFormat.CreateJsonSchemaFormat("pet", BinaryData.FromString(PetSchema), jsonSchemaIsStrict: true) };
        ResponseResult response = await Responses.CreateResponseAsync(options, Cancel);
        Assert.Equal(ResponseStatus.Completed, response.Status);
        using var pet = JsonDocument.Parse(response.GetOutputText());
        Assert.Contains(pet.RootElement.GetProperty("colour").GetString(), new[] { "red", "green" });
        Assert.Contains(pet.RootElement.GetProperty("indoor").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
    }

    // Bounded arguments (an enum and a boolean), so the random model's forced call ends well within the token limit.
    private static readonly ResponseTool Weather = ResponseTool.CreateFunctionTool("get_weather", BinaryData.FromString(
        """{"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "celsius": {"type": "boolean"}}, "required": ["city", "celsius"]}"""),
        strictModeEnabled: true, functionDescription: "The weather in a city.");

    private static CreateResponseOptions ToolOptions(ResponseToolChoice choice, params ResponseItem[] input)
    {
        var options = Options(80, input);
        options.Tools.Add(Weather);
        options.ToolChoice = choice;
        return options;
    }

    [Fact]
    public async Task AForcedFunctionCallRoundTripsWholeStreamedAndThroughPreviousResponseId()
    {
        ResponseResult first = await Responses.CreateResponseAsync(ToolOptions(ResponseToolChoice.CreateFunctionChoice("get_weather")), Cancel);
        Assert.Equal(ResponseStatus.Completed, first.Status);
        var call = Assert.IsType<FunctionCallResponseItem>(Assert.Single(first.OutputItems));
        Assert.Equal("get_weather", call.FunctionName);
        Assert.False(string.IsNullOrEmpty(call.CallId));
        using (var args = JsonDocument.Parse(call.FunctionArguments.ToString()))
            Assert.Contains(args.RootElement.GetProperty("city").GetString(), new[] { "Paris", "Oslo" });

        // Streamed: the arguments' pieces join into the whole response's arguments (greedy: the same call).
        var pieces = new StringBuilder();
        FunctionCallResponseItem? streamed = null;
        var streaming = ToolOptions(ResponseToolChoice.CreateFunctionChoice("get_weather"));
        streaming.StreamingEnabled = true;
        await foreach (var update in await Responses.CreateResponseStreamingAsync(streaming, Cancel))
        {
            if (update is StreamingResponseFunctionCallArgumentsDeltaUpdate delta) pieces.Append(delta.Delta.ToString());
            if (update is StreamingResponseOutputItemDoneUpdate { Item: FunctionCallResponseItem done }) streamed = done;
        }
        Assert.Equal(call.FunctionArguments.ToString(), pieces.ToString());
        Assert.Equal(call.FunctionArguments.ToString(), streamed?.FunctionArguments.ToString());

        // The second turn, the whole conversation sent back: the call and the tool's output; tool_choice none answers in text.
        var output = ResponseItem.CreateFunctionCallOutputItem(call.CallId, """{"temp": 3}""");
        ResponseResult answer = await Responses.CreateResponseAsync(ToolOptions(ResponseToolChoice.CreateNoneChoice(),
            ResponseItem.CreateUserMessageItem(Question), call, output), Cancel);
        Assert.IsAssignableFrom<MessageResponseItem>(Assert.Single(answer.OutputItems));

        // The same turn through previous_response_id: only the tool's output is sent; the stored conversation gives the rest.
        var continued = ToolOptions(ResponseToolChoice.CreateNoneChoice(), output);
        continued.PreviousResponseId = first.Id;
        ResponseResult again = await Responses.CreateResponseAsync(continued, Cancel);
        Assert.Equal(answer.GetOutputText(), again.GetOutputText());
        Assert.Equal(answer.Usage.InputTokenCount, again.Usage.InputTokenCount);
        Assert.Equal(first.Id, again.PreviousResponseId);
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
    }

    /// <summary>
    /// Microsoft.Extensions.AI's chat client over the SDK's responses client. Only the whole response: Microsoft.Extensions.AI.OpenAI
    /// 11.0.0 is built against OpenAI 2.14.0, and 2.15.0 (referenced here) changed the return type of
    /// <c>ResponsesClient.CreateResponseStreamingAsync</c>, so its streaming path fails in the client with a MissingMethodException
    /// before any request is sent. The server's stream is checked through the SDK and on the wire above.
    /// </summary>
    [Fact]
    public async Task MicrosoftExtensionsAiGetsTheSameTextAsTheSdk()
    {
        IChatClient client = Responses.AsIChatClient(TestServer.Model);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 16, Instructions = Instructions };
        ResponseResult reference = await Responses.CreateResponseAsync(Options(), Cancel);

        ChatResponse whole = await client.GetResponseAsync(Question, options, Cancel);
        Assert.Equal(reference.GetOutputText(), whole.Text);
        Assert.Equal(reference.Usage.InputTokenCount, whole.Usage?.InputTokenCount);
        Assert.Equal(16, whole.Usage?.OutputTokenCount);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Length, whole.FinishReason);
    }

    /// <summary>
    /// Microsoft.Extensions.AI's function calls: a required call comes back as a <see cref="FunctionCallContent"/>, and the
    /// second turn, as Microsoft.Extensions.AI writes it (the call as a function_call item, the result as function_call_output),
    /// is read and answered in text.
    /// </summary>
    [Fact]
    public async Task MicrosoftExtensionsAiFunctionCallsRoundTrip()
    {
        IChatClient client = Responses.AsIChatClient(TestServer.Model);
        // A boolean argument only: a free string would let the random model write bytes until the token limit cuts the call.
        var weather = AIFunctionFactory.Create((bool celsius) => celsius ? "3" : "37", "get_weather", "The weather in Oslo.");
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 80, Tools = [weather], ToolMode = ChatToolMode.RequireSpecific("get_weather") };
        List<Microsoft.Extensions.AI.ChatMessage> messages = [new(ChatRole.User, "Weather in Oslo?")];
        ChatResponse first = await client.GetResponseAsync(messages, options, Cancel);
        var call = Assert.Single(first.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal("get_weather", call.Name);
        Assert.NotNull(call.Arguments?["celsius"]);

        messages.AddMessages(first);
        messages.Add(new Microsoft.Extensions.AI.ChatMessage(ChatRole.Tool, [new FunctionResultContent(call.CallId, "3")]));
        ChatResponse second = await client.GetResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 8, Tools = [weather], ToolMode = ChatToolMode.None }, Cancel);
        Assert.Empty(second.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal(8, second.Usage?.OutputTokenCount);
        Assert.True(second.Usage?.InputTokenCount > first.Usage?.InputTokenCount);   // the call and its result are in the prompt
    }

    [Fact]
    public async Task StoredResponsesAreReadByIdDeletedAndNotStoredWhenStoreIsFalse()
    {
        ResponseResult stored = await Responses.CreateResponseAsync(Options(4), Cancel);
        using (var got = JsonDocument.Parse(await S.Http.GetStringAsync($"v1/responses/{stored.Id}", Cancel)))
        {
            Assert.Equal(stored.Id, got.RootElement.GetProperty("id").GetString());
            Assert.Equal(stored.GetOutputText(), got.RootElement.GetProperty("output")[0].GetProperty("content")[0].GetProperty("text").GetString());
            Assert.True(got.RootElement.GetProperty("store").GetBoolean());
        }
        ResponseResult viaSdk = await Responses.GetResponseAsync(stored.Id, Cancel);
        Assert.Equal(stored.GetOutputText(), viaSdk.GetOutputText());

        var unstoredOptions = Options(4);
        unstoredOptions.StoredOutputEnabled = false;
        ResponseResult unstored = await Responses.CreateResponseAsync(unstoredOptions, Cancel);
        Assert.Equal(404, (int)(await S.Http.GetAsync($"v1/responses/{unstored.Id}", Cancel)).StatusCode);

        Assert.Equal(200, (int)(await S.Http.DeleteAsync($"v1/responses/{stored.Id}", Cancel)).StatusCode);
        var (status, body, _) = await S.PostAsync("v1/responses",
            $$"""{"model": "{{TestServer.Model}}", "input": "hi", "max_output_tokens": 2, "previous_response_id": "{{stored.Id}}"}""");
        Assert.Equal(404, status);
        Assert.Equal("previous_response_id", body.GetProperty("error").GetProperty("param").GetString());
    }

    [Fact]
    public async Task AClientThatDisconnectsMidStreamLeavesNoBlockInUse()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/responses")
        {
            Content = new StringContent($$"""{"model": "{{TestServer.Model}}", "input": "go", "max_output_tokens": 1000, "stream": true, "temperature": 0}""",
                Encoding.UTF8, "application/json"),
        };
        var response = await S.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Cancel);
        var stream = await response.Content.ReadAsStreamAsync(Cancel);
        var buffer = new byte[64];
        Assert.True(await stream.ReadAsync(buffer, Cancel) > 0);                 // events are flowing
        response.Dispose();                                                      // the client goes away mid-stream
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
    }
}
