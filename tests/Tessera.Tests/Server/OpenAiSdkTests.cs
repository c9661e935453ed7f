#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK
using System.Text.Json;
using OpenAI.Chat;
using Tessera.Models.Chat;
using Xunit;
using TemplateMessage = Tessera.Models.Chat.ChatMessage;

namespace Tessera.Tests.Server;

/// <summary>The server as a user reaches it: the official OpenAI .NET SDK against Kestrel on a loopback port.</summary>
public class OpenAiSdkTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private TestServer S => fixture.Server;
    private ChatClient Chat => S.Client().GetChatClient(TestServer.Model);

    private static readonly OpenAI.Chat.ChatMessage[] Conversation = [new SystemChatMessage("You are terse."), new UserChatMessage("Name a colour.")];

    private int PromptTokens() => S.Chat.Tokens([new TemplateMessage("system", "You are terse."), new TemplateMessage("user", "Name a colour.")]).Length;

    [Fact]
    public async Task ChatCompletionReportsTextFinishReasonAndUsage()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0 };
        ChatCompletion completion = await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken);
        Assert.Equal(ChatFinishReason.Length, completion.FinishReason);   // a random model rarely writes "<|im_end|>" within 12 bytes
        Assert.Equal(PromptTokens(), completion.Usage.InputTokenCount);
        Assert.Equal(12, completion.Usage.OutputTokenCount);
        Assert.Equal(PromptTokens() + 12, completion.Usage.TotalTokenCount);
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.Equal(TestServer.Model, completion.Model);
        Assert.NotEmpty(completion.Content[0].Text);
    }

    [Fact]
    public async Task StreamedChatEqualsTheWholeResponseAndEndsWithUsage()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 20, Temperature = 0 };
        ChatCompletion whole = await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken);
        var text = new System.Text.StringBuilder();
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        int updates = 0;
        await foreach (var update in Chat.CompleteChatStreamingAsync(Conversation, options, TestContext.Current.CancellationToken))
        {
            updates++;
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            finish ??= update.FinishReason;
            usage ??= update.Usage;
        }
        Assert.Equal(whole.Content[0].Text, text.ToString());
        Assert.True(updates > 5, $"only {updates} updates: the response was not streamed token by token");
        Assert.Equal(whole.FinishReason, finish);
        Assert.NotNull(usage);
        Assert.Equal(20, usage!.OutputTokenCount);
    }

    [Fact]
    public async Task StopStringCutsTheTextBeforeItsFirstOccurrenceAcrossTokens()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 40, Temperature = 0 };
        string full = (await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken)).Value.Content[0].Text;
        // Two characters from the middle of the greedy text: with the byte tokenizer they span two tokens.
        string stop = full.Substring(full.Length / 2, 2);
        options.StopSequences.Add(stop);
        ChatCompletion stopped = await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken);
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], stopped.Content.Count == 0 ? "" : stopped.Content[0].Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
    }

    [Fact]
    public async Task SeededSamplingIsReproducibleAndTheSeedMatters()
    {
        async Task<string> Run(long seed) => (await Chat.CompleteChatAsync(Conversation,
            new ChatCompletionOptions { MaxOutputTokenCount = 24, Temperature = 1.0f, Seed = seed })).Value.Content[0].Text;
        string a = await Run(17), b = await Run(17), c = await Run(18);
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
    }

    [Fact]
    public async Task LogprobsHaveOneEntryPerTokenWithSortedAlternativesAndTheGreedyTokenOnTop()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 6, Temperature = 0, IncludeLogProbabilities = true, TopLogProbabilityCount = 3 };
        ChatCompletion completion = await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken);
        var logprobs = completion.ContentTokenLogProbabilities;
        Assert.Equal(6, logprobs.Count);
        foreach (var token in logprobs)
        {
            Assert.True(token.LogProbability <= 0);
            Assert.Equal(3, token.TopLogProbabilities.Count);
            Assert.True(token.TopLogProbabilities[0].LogProbability >= token.TopLogProbabilities[1].LogProbability);
            // Greedy: the chosen token is the most likely one (F32 logits, the same row: equal log-probabilities).
            Assert.Equal(token.TopLogProbabilities[0].LogProbability, token.LogProbability, 12);
            Assert.Equal(token.TopLogProbabilities[0].Utf8Bytes!.Value.ToArray(), token.Utf8Bytes!.Value.ToArray());
        }
    }

    [Fact]
    public async Task ChoicesOfOneRequestAreIndexedAndCountedInUsage()
    {
        var (status, body, _) = await S.PostAsync("v1/chat/completions",
            $$"""{"model": "{{TestServer.Model}}", "messages": [{"role": "user", "content": "hi"}], "n": 3, "max_tokens": 5, "temperature": 1.0, "seed": 5}""");
        Assert.Equal(200, status);
        var choices = body.GetProperty("choices").EnumerateArray().ToList();
        Assert.Equal([0, 1, 2], choices.Select(c => c.GetProperty("index").GetInt32()));
        Assert.Equal(15, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(S.Chat.Tokens([new TemplateMessage("user", "hi")]).Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
    }

    [Fact]
    public async Task GreedyOutputInsideAFullBatchEqualsTheSameRequestAlone()
    {
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 16, Temperature = 0 };
        OpenAI.Chat.ChatMessage[] probe = [new UserChatMessage("The same question.")];
        string alone = (await Chat.CompleteChatAsync(probe, options, TestContext.Current.CancellationToken)).Value.Content[0].Text;
        // Eight at once (the batch is 8): the probe among seven others of different lengths.
        var tasks = Enumerable.Range(0, 8).Select(i => Chat.CompleteChatAsync(
            i == 3 ? probe : [new UserChatMessage(new string('x', 5 + 11 * i) + " other")], options)).ToList();
        var results = await Task.WhenAll(tasks);
        Assert.Equal(alone, results[3].Value.Content[0].Text);
    }

    [Fact]
    public async Task LegacyCompletionsEndpointEchoesAndStreams()
    {
        var (status, body, _) = await S.PostAsync("v1/completions",
            $$"""{"model": "{{TestServer.Model}}", "prompt": "Gets the value", "max_tokens": 8, "temperature": 0, "echo": true, "logprobs": 2}""");
        Assert.Equal(200, status);
        var choice = body.GetProperty("choices")[0];
        Assert.StartsWith("Gets the value", choice.GetProperty("text").GetString());
        Assert.Equal(8, choice.GetProperty("logprobs").GetProperty("tokens").GetArrayLength());
        Assert.Equal("text_completion", body.GetProperty("object").GetString());

        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = new StringContent($$"""{"model": "{{TestServer.Model}}", "prompt": [71, 101, 116], "max_tokens": 8, "temperature": 0, "stream": true}""",
                System.Text.Encoding.UTF8, "application/json"),
        };
        using var response = await S.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var lines = (await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("data: [DONE]", lines[^1]);
        var streamed = string.Concat(lines[..^1].Select(l => JsonDocument.Parse(l["data: ".Length..]).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()));
        var (_, whole, _) = await S.PostAsync("v1/completions", $$"""{"model": "{{TestServer.Model}}", "prompt": "Get", "max_tokens": 8, "temperature": 0}""");
        Assert.Equal(whole.GetProperty("choices")[0].GetProperty("text").GetString(), streamed);   // token ids [71, 101, 116] are "Get"
    }

    [Fact]
    public async Task ModelsHealthAndMetricsAnswer()
    {
        var models = JsonDocument.Parse(await S.Http.GetStringAsync("v1/models", TestContext.Current.CancellationToken)).RootElement;
        Assert.Equal(TestServer.Model, models.GetProperty("data")[0].GetProperty("id").GetString());
        Assert.Equal("ok", await S.Http.GetStringAsync("health", TestContext.Current.CancellationToken));
        var metrics = await S.Http.GetStringAsync("metrics", TestContext.Current.CancellationToken);
        Assert.Contains("# TYPE tessera_time_to_first_token_seconds histogram", metrics);
        Assert.Contains("tessera_kv_blocks_total ", metrics);
    }
}
