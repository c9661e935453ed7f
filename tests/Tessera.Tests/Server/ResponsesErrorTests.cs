using System.Text.Json;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// Bad POST /v1/responses requests, sent with a raw HttpClient, get OpenAI-style error objects with the right status and the
/// Responses API's field names (never a 5xx), and leave no KV block in use; unknown fields are ignored.
/// </summary>
public class ResponsesErrorTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private TestServer S => fixture.Server;
    private const string M = TestServer.Model;

    public static TheoryData<string, string, int, string?, string> Cases() => new()
    {
        // name, body, status, param, text the message contains
        { "malformed JSON", """{"model": "tessera-debug", "input": [""", 400, null, "not valid JSON" },
        { "empty body", "", 400, null, "not valid JSON" },
        { "missing input", $$"""{"model": "{{M}}"}""", 400, "input", "you must provide 'input'" },
        { "input of the wrong type", $$"""{"model": "{{M}}", "input": 5}""", 400, "input", "wrong type" },
        { "wrong type of max_output_tokens", $$"""{"model": "{{M}}", "input": "hi", "max_output_tokens": "ten"}""", 400, "max_output_tokens", "wrong type" },
        { "wrong type of temperature", $$"""{"model": "{{M}}", "input": "hi", "temperature": "hot"}""", 400, "temperature", "wrong type" },
        { "wrong type of a message's content", $$"""{"model": "{{M}}", "input": [{"role": "user", "content": 5}]}""", 400, "input[0].content", "must be a string or a list" },
        { "unknown role", $$"""{"model": "{{M}}", "input": [{"role": "wizard", "content": "hi"}]}""", 400, "input[0].role", "expected one of" },
        { "an image part", $$"""{"model": "{{M}}", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}""", 400, "input[0].content[0].type", "not supported" },
        { "an unknown item", $$"""{"model": "{{M}}", "input": [{"type": "web_search_call", "id": "x"}]}""", 400, "input[0].type", "not supported" },
        { "a function_call_output without call_id", $$"""{"model": "{{M}}", "input": [{"type": "function_call_output", "output": "3"}]}""", 400, "input[0].call_id", "missing" },
        { "unknown model", """{"model": "gpt-4o", "input": "hi"}""", 404, "model", "does not exist" },
        { "zero max_output_tokens", $$"""{"model": "{{M}}", "input": "hi", "max_output_tokens": 0}""", 400, "max_output_tokens", "at least 1" },
        { "max_output_tokens past the context", $$"""{"model": "{{M}}", "input": "hi", "max_output_tokens": 100000}""", 400, "max_output_tokens", "max_output_tokens (100000) plus the prompt" },
        { "prompt longer than the context", $$"""{"model": "{{M}}", "input": "{{new string('a', 300)}}"}""", 400, "input", "context holds 256" },
        { "temperature out of range", $$"""{"model": "{{M}}", "input": "hi", "temperature": 7}""", 400, "temperature", "[0, 2]" },
        { "a tool that is not a function", $$"""{"model": "{{M}}", "input": "hi", "tools": [{"type": "web_search"}]}""", 400, "tools", "only function tools" },
        { "tool_choice without tools", $$"""{"model": "{{M}}", "input": "hi", "tool_choice": "required"}""", 400, "tool_choice", "no tools are given" },
        { "an unknown text format", $$"""{"model": "{{M}}", "input": "hi", "text": {"format": {"type": "xml"} } }""", 400, "text.format", "not one of text, json_object, json_schema" },
        { "a json_schema format without its schema", $$"""{"model": "{{M}}", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"} } }""", 400, "text.format", "schema is required" },
        { "an unknown previous response", $$"""{"model": "{{M}}", "input": "hi", "previous_response_id": "resp_nope"}""", 404, "previous_response_id", "not found" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task BadResponsesRequestGetsAnOpenAiErrorObject(string name, string body, int status, string? param, string message)
    {
        var (actual, json, _) = await S.PostAsync("v1/responses", body);
        Assert.True(actual == status, $"{name}: status {actual}, body {json}");
        var error = json.GetProperty("error");
        Assert.Contains(message, error.GetProperty("message").GetString());
        Assert.Equal(param, error.TryGetProperty("param", out var p) ? p.GetString() : null);
        Assert.False(string.IsNullOrEmpty(error.GetProperty("type").GetString()));
        Assert.Empty(await S.ServerErrorsAsync());
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
    }

    [Fact]
    public async Task AnUnknownStoredResponseIsA404()
    {
        var response = await S.Http.GetAsync("v1/responses/resp_nope", TestContext.Current.CancellationToken);
        Assert.Equal(404, (int)response.StatusCode);
        using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        Assert.Equal("not_found", body.RootElement.GetProperty("error").GetProperty("code").GetString());
        Assert.Equal(404, (int)(await S.Http.DeleteAsync("v1/responses/resp_nope", TestContext.Current.CancellationToken)).StatusCode);
    }

    [Fact]
    public async Task UnknownFieldsAreIgnoredAndTheParametersEchoed()
    {
        var (status, body, _) = await S.PostAsync("v1/responses",
            $$"""{"model": "{{M}}", "input": "hi", "max_output_tokens": 2, "temperature": 0.5, "seed": 4, "reasoning": {"effort": "low"}, "user": "u", "metadata": {"a": "b"}, "include": [], "something_new": [1]}""");
        Assert.Equal(200, status);
        Assert.Equal("response", body.GetProperty("object").GetString());
        Assert.Equal("b", body.GetProperty("metadata").GetProperty("a").GetString());
        Assert.Equal("u", body.GetProperty("user").GetString());
        Assert.Equal(0.5, body.GetProperty("temperature").GetDouble());
        Assert.Equal(2, body.GetProperty("max_output_tokens").GetInt32());
        Assert.Equal(2, body.GetProperty("usage").GetProperty("output_tokens").GetInt32());
        Assert.Equal("max_output_tokens", body.GetProperty("incomplete_details").GetProperty("reason").GetString());
    }
}
