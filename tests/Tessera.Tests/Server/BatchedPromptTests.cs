using System.Text.Json;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// POST /v1/completions with a batch of prompts (OpenAI's array forms), as clients such as evaluation harnesses send them:
/// P prompts with n choices give P n choices, prompt p's i-th at index p n + i, each equal to that prompt sent alone, and one
/// usage summed over the prompts; a batch the server cannot take is refused whole, leaving no block in use.
/// </summary>
public class BatchedPromptTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private TestServer S => fixture.Server;
    private const string M = TestServer.Model;

    private async Task<JsonElement> Complete(string prompt, int n = 1, int maxTokens = 8, bool stream = false)
    {
        var (status, json, _) = await S.PostAsync("v1/completions",
            $$"""{"model": "{{M}}", "prompt": {{prompt}}, "n": {{n}}, "max_tokens": {{maxTokens}}, "temperature": 0, "stream": {{(stream ? "true" : "false")}}}""");
        Assert.True(status == 200, json.ToString());
        return json;
    }

    private static string[] Texts(JsonElement body) =>
        body.GetProperty("choices").EnumerateArray().OrderBy(c => c.GetProperty("index").GetInt32()).Select(c => c.GetProperty("text").GetString()!).ToArray();

    [Fact]
    public async Task EachPromptOfABatchGetsWhatItGetsAloneAtItsIndices()
    {
        var alone = new[] { Texts(await Complete("\"Gets the value\""))[0], Texts(await Complete("\"Sets the size of\""))[0], Texts(await Complete("\"x\""))[0] };
        var batch = await Complete("""["Gets the value", "Sets the size of", "x"]""", n: 2);
        var texts = Texts(batch);
        Assert.Equal(6, texts.Length);
        for (int p = 0; p < 3; p++)
            for (int i = 0; i < 2; i++) Assert.Equal(alone[p], texts[p * 2 + i]);    // greedy: both choices of a prompt agree
        var usage = batch.GetProperty("usage");
        Assert.Equal("Gets the value".Length + "Sets the size of".Length + 1, usage.GetProperty("prompt_tokens").GetInt32());   // byte tokens
        Assert.Equal(6 * 8, usage.GetProperty("completion_tokens").GetInt32());

        // Token-id arrays: the same prompts by their byte ids.
        string Ids(string text) => "[" + string.Join(",", System.Text.Encoding.UTF8.GetBytes(text)) + "]";
        Assert.Equal(alone[..2], Texts(await Complete($"[{Ids("Gets the value")}, {Ids("Sets the size of")}]")));
    }

    [Fact]
    public async Task AStreamedBatchInterleavesItsChoicesAndEndsWithOneUsage()
    {
        var whole = Texts(await Complete("""["Gets the value", "Sets the size of"]""", maxTokens: 12));
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = new StringContent($$$"""{"model": "{{{M}}}", "prompt": ["Gets the value", "Sets the size of"], "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}""",
                System.Text.Encoding.UTF8, "application/json"),
        };
        using var response = await S.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        var streamed = new[] { new System.Text.StringBuilder(), new System.Text.StringBuilder() };
        int usages = 0;
        foreach (var line in text.Split('\n').Where(l => l.StartsWith("data: {", StringComparison.Ordinal)))
        {
            var chunk = JsonDocument.Parse(line[6..]).RootElement;
            foreach (var c in chunk.GetProperty("choices").EnumerateArray()) streamed[c.GetProperty("index").GetInt32()].Append(c.GetProperty("text").GetString());
            if (chunk.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object)
            {
                usages++;
                Assert.Equal(24, u.GetProperty("completion_tokens").GetInt32());
            }
        }
        Assert.Equal(whole, streamed.Select(b => b.ToString()));
        Assert.Equal(1, usages);
        Assert.EndsWith("data: [DONE]\n\n", text);
    }

    [Theory]
    [InlineData("[]", "empty array")]
    [InlineData("[\"a\", 5]", "mixes")]
    [InlineData("[[1, 2], \"a\"]", "mixes")]
    [InlineData("[[1, \"x\"]]", "array of arrays of token ids")]
    public async Task AMalformedBatchIsRefusedNamingThePrompt(string prompt, string message)
    {
        var (status, json, _) = await S.PostAsync("v1/completions", $$"""{"model": "{{M}}", "prompt": {{prompt}}, "max_tokens": 4}""");
        Assert.Equal(400, status);
        Assert.Contains(message, json.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal("prompt", json.GetProperty("error").GetProperty("param").GetString());
    }

    [Fact]
    public async Task ABatchTheServerCannotTakeIsRefusedWholeAndLeavesNoBlockInUse()
    {
        // The third prompt is past the context of 256: the two before it were queued, and are cancelled.
        var (status, json, _) = await S.PostAsync("v1/completions",
            $$"""{"model": "{{M}}", "prompt": ["a", "b", "{{new string('c', 300)}}"], "max_tokens": 200}""");
        Assert.Equal(400, status);
        Assert.Contains("context", json.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(0, await S.BlocksInUseAfterSettlingAsync());
        var (tooMany, json2, _) = await S.PostAsync("v1/completions",
            $$"""{"model": "{{M}}", "prompt": [{{string.Join(",", Enumerable.Range(0, 65).Select(i => $"\"p{i}\""))}}], "n": 2, "max_tokens": 4}""");
        Assert.Equal(400, tooMany);
        Assert.Contains("at most 128", json2.GetProperty("error").GetProperty("message").GetString());
        Assert.Empty(await S.ServerErrorsAsync());
    }
}
