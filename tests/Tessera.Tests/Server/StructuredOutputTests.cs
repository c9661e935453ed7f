using System.Text.Json;
using Microsoft.Extensions.AI;
using OpenAI.Chat;
using Tessera.Inference.Serving;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// Structured outputs (response_format) as clients ask for them: the OpenAI SDK's json_schema and json_object formats, and
/// Microsoft.Extensions.AI's <c>GetResponseAsync&lt;T&gt;</c> through the OpenAI adapter over HTTP and through Tessera's
/// in-process client, which must each give back a typed object. The model has random weights: whatever it prefers, a reply that
/// ends by itself is a document of the schema. Bad formats are 400s naming response_format.
/// </summary>
public class StructuredOutputTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private TestServer S => fixture.Server;
    private ChatClient Chat => S.Client().GetChatClient(TestServer.Model);
    private static readonly OpenAI.Chat.ChatMessage[] Conversation = [new UserChatMessage("Describe a pet as JSON.")];

    // Bounded (booleans, enums, integers), so the random model's reply ends well within max_tokens.
    private const string PetSchema = """
        {"type": "object", "properties": {"indoor": {"type": "boolean"}, "legs": {"type": "integer"}, "colour": {"enum": ["red", "green"]}},
         "required": ["indoor", "legs", "colour"], "additionalProperties": false}
        """;

    [Theory]
    [InlineData(0.0f)]
    [InlineData(1.0f)]
    public async Task AJsonSchemaReplyIsADocumentOfTheSchema(float temperature)
    {
        var options = new ChatCompletionOptions
        {
#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK; the server implements it
            MaxOutputTokenCount = 80, Temperature = temperature, Seed = 3,
#pragma warning restore OPENAI001
            ResponseFormat = OpenAI.Chat.ChatResponseFormat.CreateJsonSchemaFormat("pet", BinaryData.FromString(PetSchema), jsonSchemaIsStrict: true),
        };
        var completion = (await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken)).Value;
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Stop, completion.FinishReason);
        using var doc = JsonDocument.Parse(completion.Content[0].Text);
        var root = doc.RootElement;
        Assert.Contains(root.GetProperty("indoor").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
        Assert.True(root.GetProperty("legs").TryGetInt64(out _));
        Assert.Contains(root.GetProperty("colour").GetString(), new[] { "red", "green" });
        var metrics = await S.Http.GetStringAsync("metrics", TestContext.Current.CancellationToken);
        double Sample(string name) => double.Parse(metrics.Split('\n').Single(l => l.StartsWith(name + " ", StringComparison.Ordinal))[(name.Length + 1)..],
            System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(Sample("tessera_constrained_requests_total") >= 1);
        Assert.True(Sample("tessera_constrained_documents_total") >= 1);
    }

    /// <summary>Streamed, the deltas join into a document of the schema, and the last says stop.</summary>
    [Fact]
    public async Task AStreamedJsonSchemaReplyJoinsIntoADocument()
    {
        var options = new ChatCompletionOptions
        {
            MaxOutputTokenCount = 80, Temperature = 0,
            ResponseFormat = OpenAI.Chat.ChatResponseFormat.CreateJsonSchemaFormat("pet", BinaryData.FromString(PetSchema), jsonSchemaIsStrict: true),
        };
        var text = new System.Text.StringBuilder();
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in Chat.CompleteChatStreamingAsync(Conversation, options, TestContext.Current.CancellationToken))
        {
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            finish ??= update.FinishReason;
        }
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Stop, finish);
        using var doc = JsonDocument.Parse(text.ToString());
        Assert.Contains(doc.RootElement.GetProperty("colour").GetString(), new[] { "red", "green" });
    }

    [Fact]
    public async Task AJsonObjectReplyIsAnObjectOrItsPrefixWhenCutShort()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 60, Temperature = 0, ResponseFormat = OpenAI.Chat.ChatResponseFormat.CreateJsonObjectFormat() };
        var completion = (await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken)).Value;
        string text = completion.Content[0].Text;
        Assert.True(Tessera.Inference.Constraints.JsonGrammar.AnyObject().Start().Accepts(System.Text.Encoding.UTF8.GetBytes(text)), text);
        if (completion.FinishReason == OpenAI.Chat.ChatFinishReason.Stop) Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(text).RootElement.ValueKind);
        else Assert.Equal(60, completion.Usage.OutputTokenCount);
    }

    /// <summary>The legacy completions endpoint takes response_format too (as vLLM's does): each of two choices is a document.</summary>
    [Fact]
    public async Task TheCompletionsEndpointTakesAJsonSchemaToo()
    {
        string format = $$$"""{"type": "json_schema", "json_schema": {"name": "pet", "schema": {{{PetSchema}}}}}""";
        var (status, json, _) = await S.PostAsync("v1/completions",
            $$"""{"model": "{{TestServer.Model}}", "prompt": "A pet:", "max_tokens": 80, "n": 2, "temperature": 1, "seed": 4, "response_format": {{format}}}""");
        Assert.Equal(200, status);
        foreach (var choice in json.GetProperty("choices").EnumerateArray())
        {
            Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());
            using var doc = JsonDocument.Parse(choice.GetProperty("text").GetString()!);
            Assert.Contains(doc.RootElement.GetProperty("colour").GetString(), new[] { "red", "green" });
        }
    }

    public enum Colour { Red, Green }

    // Legs is a long: the grammar bounds integers to 16 digits, so any integer the random model writes fits (an int might not).
    public sealed record Pet(bool Indoor, long Legs, Colour Colour);

    [Fact]
    public async Task GetResponseAsyncOfATypeGivesTheObjectOverHttpAndInProcess()
    {
        IChatClient http = S.Client().GetChatClient(TestServer.Model).AsIChatClient();
        IChatClient local = new TesseraChatClient(S.Engine, S.Chat, TestServer.Model);
        var options = new ChatOptions { MaxOutputTokens = 80, Temperature = 0 };
        var overHttp = await http.GetResponseAsync<Pet>("Describe a pet.", options, cancellationToken: TestContext.Current.CancellationToken);
        var inProcess = await local.GetResponseAsync<Pet>("Describe a pet.", options, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(overHttp.TryGetResult(out var a), overHttp.Text);
        Assert.True(inProcess.TryGetResult(out var b), inProcess.Text);
        Assert.Equal(b, a);                                            // greedy: the same object both ways
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Stop, inProcess.FinishReason);
    }

    [Theory]
    [InlineData("""{"type": "xml"}""", "is not one of text, json_object, json_schema")]
    [InlineData("""{"type": "json_schema"}""", "json_schema.schema is required")]
    [InlineData("""{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}}}}""", "'pattern'")]
    [InlineData("""{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string"}}}""", "root must be an object")]
    public async Task ABadResponseFormatIsRefusedNamingTheField(string format, string message)
    {
        var (status, json, _) = await S.PostAsync("v1/chat/completions",
            $$"""{"model": "{{TestServer.Model}}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "response_format": {{format}}}""");
        Assert.Equal(400, status);
        Assert.Equal("response_format", json.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains(message, json.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
    }
}
