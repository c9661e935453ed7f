using System.Text.Json;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// Bad requests get OpenAI-style error objects with the right status, never a 5xx, and leave no KV block in use (read
/// from /metrics, as an operator would).
/// </summary>
public class ErrorMatrixTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private TestServer S => fixture.Server;
    private const string M = TestServer.Model;

    public static TheoryData<string, string, int, string?, string> Cases() => new()
    {
        // name, body, status, param, text the message contains
        { "malformed JSON", """{"model": "tessera-debug", "messages": [""", 400, null, "not valid JSON" },
        { "missing messages", $$"""{"model": "{{M}}"}""", 400, "messages", "you must provide 'messages'" },
        { "wrong type of max_tokens", $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}""", 400, "max_tokens", "wrong type" },
        { "wrong type of a message", $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": 5}]}""", 400, "messages[0].content", "must be a string or an array" },
        { "unknown role", $$"""{"model": "{{M}}", "messages": [{"role": "wizard", "content": "hi"}]}""", 400, "messages[0].role", "expected one of" },
        { "unknown model", """{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}""", 404, "model", "does not exist" },
        { "max_tokens past the context", $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}""", 400, "max_tokens", "exceed the model's context of 256" },
        { "prompt longer than the context", $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "{{new string('a', 300)}}"}]}""", 400, "messages", "context holds 256" },
        { "temperature out of range", $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}""", 400, "temperature", "[0, 2]" },
        { "top_logprobs without logprobs", $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}""", 400, "top_logprobs", "logprobs set to true" },
        { "empty body", "", 400, null, "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task BadChatRequestGetsAnOpenAiErrorObject(string name, string body, int status, string? param, string message)
    {
        var (actual, json, _) = await S.PostAsync("v1/chat/completions", body);
        Assert.True(actual == status, $"{name}: status {actual}, body {json}");
        var error = json.GetProperty("error");
        Assert.Contains(message, error.GetProperty("message").GetString());
        Assert.Equal(param, error.TryGetProperty("param", out var p) ? p.GetString() : null);
        Assert.False(string.IsNullOrEmpty(error.GetProperty("type").GetString()));
        Assert.Empty(await S.ServerErrorsAsync());
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
    }

    [Fact]
    public async Task UnknownFieldsAreIgnored()
    {
        var (status, _, _) = await S.PostAsync("v1/chat/completions",
            $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "hi", "name": "x"}], "max_tokens": 2, "logit_bias": {"5": 1}, "user": "u", "something_new": [1]}""");
        Assert.Equal(200, status);
    }

    [Fact]
    public async Task ClientThatDisconnectsMidStreamLeavesNoBlockInUse()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent($$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "go"}], "max_tokens": 220, "stream": true, "temperature": 0}""",
                System.Text.Encoding.UTF8, "application/json"),
        };
        var response = await S.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        var stream = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
        var buffer = new byte[64];
        Assert.True(await stream.ReadAsync(buffer, TestContext.Current.CancellationToken) > 0);                 // tokens are flowing
        response.Dispose();                                             // the client goes away mid-stream
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
        Assert.Empty(await S.ServerErrorsAsync());
    }

    [Fact]
    public async Task WrongApiKeyGets401AndTheRightOneIsServed()
    {
        await using var keyed = await TestServer.StartAsync(apiKey: "sekret");
        string body = $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}""";
        var (wrong, json, _) = await keyed.PostAsync("v1/chat/completions", body, key: "guess");
        Assert.Equal(401, wrong);
        Assert.Equal("invalid_api_key", json.GetProperty("error").GetProperty("code").GetString());
        var (missing, _, _) = await keyed.PostAsync("v1/chat/completions", body);
        Assert.Equal(401, missing);
        var (right, _, _) = await keyed.PostAsync("v1/chat/completions", body, key: "sekret");
        Assert.Equal(200, right);
        Assert.Equal("ok", await keyed.Http.GetStringAsync("health", TestContext.Current.CancellationToken));   // health and metrics need no key
    }

    [Fact]
    public async Task FullQueueGets429WithRetryAfterAndFreesEverythingAfterwards()
    {
        // One sequence runs at a time and one may wait; six long requests at once (each takes a few hundred milliseconds
        // on this model) find the queue full: every one either completes or gets 429.
        await using var small = await TestServer.StartAsync(maxBatch: 1, maxQueue: 1, context: 2048, budget: 64);
        string body = $$"""{"model": "{{M}}", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1500, "temperature": 0}""";
        var results = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => small.PostAsync("v1/chat/completions", body)));
        Assert.All(results, r => Assert.Contains(r.Status, new[] { 200, 429 }));
        var rejected = results.Where(r => r.Status == 429).ToList();
        Assert.NotEmpty(rejected);
        Assert.Contains(results, r => r.Status == 200);
        foreach (var (_, json, response) in rejected)
        {
            Assert.Equal("1", response.Headers.GetValues("Retry-After").Single());
            Assert.Equal("rate_limit_exceeded", json.GetProperty("error").GetProperty("code").GetString());
        }
        Assert.Equal(0, await small.BlocksInUseAfterSettlingAsync());
        Assert.Empty(await small.ServerErrorsAsync());
        Assert.Equal(rejected.Count, await small.MetricAsync("tessera_requests_total{outcome=\"rejected\"}"));
    }
}
