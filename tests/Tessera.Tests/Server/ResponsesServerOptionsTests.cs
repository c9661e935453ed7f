#pragma warning disable OPENAI001 // the SDK marks its Responses client experimental; the server implements what it sends
using System.ClientModel;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Responses;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Chat;
using Tessera.Models.Tokenization;
using Tessera.Server;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Models.Adapters;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// POST /v1/responses on servers set up otherwise than the shared fixture: an API key (401 without it), a queue of one (429 with
/// Retry-After), a store of two responses
/// (the least recently used evicted), and a served LoRA adapter named as the model (the adapter's greedy answer, as chat's).
/// </summary>
public sealed class ResponsesServerOptionsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-responses-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    private static string Body(string input, string? previous = null) =>
        $$"""{"model": "{{TestServer.Model}}", "input": "{{input}}", "max_output_tokens": 2{{(previous is null ? "" : $", \"previous_response_id\": \"{previous}\"")}}}""";

    [Fact]
    public async Task AWrongApiKeyIsA401ErrorObject()
    {
        await using var server = await TestServer.StartAsync(apiKey: "secret");
        var (status, body, _) = await server.PostAsync("v1/responses", Body("hi"), key: "wrong");
        Assert.Equal(401, status);
        Assert.Equal("invalid_api_key", body.GetProperty("error").GetProperty("code").GetString());
        Assert.Equal(401, (await server.PostAsync("v1/responses", Body("hi"))).Status);
        Assert.Equal(200, (await server.PostAsync("v1/responses", Body("hi"), key: "secret")).Status);
    }

    [Fact]
    public async Task AFullQueueIsA429WithRetryAfter()
    {
        // One sequence runs at a time and one may wait; six long requests at once find the queue full: each completes or gets 429.
        await using var small = await TestServer.StartAsync(maxBatch: 1, maxQueue: 1, context: 2048, budget: 64);
        string body = $$"""{"model": "{{TestServer.Model}}", "input": "x", "max_output_tokens": 1500, "temperature": 0}""";
        var results = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => small.PostAsync("v1/responses", body)));
        Assert.All(results, r => Assert.Contains(r.Status, new[] { 200, 429 }));
        var rejected = results.Where(r => r.Status == 429).ToList();
        Assert.NotEmpty(rejected);
        foreach (var (_, json, response) in rejected)
        {
            Assert.Equal("1", response.Headers.GetValues("Retry-After").Single());
            Assert.Equal("rate_limit_exceeded", json.GetProperty("error").GetProperty("code").GetString());
        }
        Assert.Equal(0, await small.BlocksInUseAfterSettlingAsync());
        Assert.Empty(await small.ServerErrorsAsync());
    }

    [Fact]
    public async Task TheStoreKeepsTheMostRecentlyUsedResponsesOnly()
    {
        await using var server = await TestServer.StartAsync(storedResponses: 2);
        async Task<string> Create(string input, string? previous = null)
        {
            var (status, body, _) = await server.PostAsync("v1/responses", Body(input, previous));
            Assert.Equal(200, status);
            return body.GetProperty("id").GetString()!;
        }
        async Task<int> Get(string id) => (int)(await server.Http.GetAsync($"v1/responses/{id}", Cancel)).StatusCode;

        string a = await Create("a"), b = await Create("b");
        Assert.Equal(200, await Get(a));                                // a is now the most recently used
        string c = await Create("c");                                   // evicts b
        Assert.Equal(404, await Get(b));
        Assert.Equal(200, await Get(a));
        Assert.Equal(200, await Get(c));
        Assert.Equal(404, (await server.PostAsync("v1/responses", Body("more", previous: b))).Status);
        string d = await Create("more", previous: c);                   // continuing c stores d and evicts a (c was read after a)
        Assert.Equal(404, await Get(a));
        Assert.Equal(200, await Get(d));

        await using var none = await TestServer.StartAsync(storedResponses: 0);
        var (_, unstored, _) = await none.PostAsync("v1/responses", Body("x"));
        Assert.False(unstored.GetProperty("store").GetBoolean());
        Assert.Equal(404, (int)(await none.Http.GetAsync($"v1/responses/{unstored.GetProperty("id").GetString()}", Cancel)).StatusCode);
    }

    [Fact(Timeout = 120_000)]
    public async Task AServedLoraAdapterNamedAsTheModelAnswersAsChatDoes()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 561);
        var model = PretrainedModel.Load(c.Base, new CpuBackend(1), DType.F64, loraModules: [new LoraModule("sql", c.Adapter)]);
        var tokenizer = new ByteTokenizer();
        using var engine = new InferenceEngine(model, tokenizer, new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 32, MaxQueue = 64 },
        });
        var chat = new ChatPrompt(new ChatFormat(ChatTemplate.Fallback, null, null, IsFallback: true), tokenizer);
        await using var server = await OpenAiServer.StartAsync(engine, chat, new ServeOptions { Port = 0, ModelName = "base" }, cancellationToken: Cancel);
        var client = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseAddress, "v1") });

        async Task<ResponseResult> Respond(string name) => await client.GetResponsesClient().CreateResponseAsync(new CreateResponseOptions
        {
            Model = name, MaxOutputTokenCount = 10, Temperature = 0, InputItems = { ResponseItem.CreateUserMessageItem("Name a colour") },
        }, Cancel);
        var sql = await Respond("sql");
        var baseAnswer = await Respond("base");
        ChatCompletion chatSql = await client.GetChatClient("sql").CompleteChatAsync([new UserChatMessage("Name a colour")],
            new ChatCompletionOptions { MaxOutputTokenCount = 10, Temperature = 0 }, Cancel);
        Assert.Equal("sql", sql.Model);
        Assert.Equal(chatSql.Content[0].Text, sql.GetOutputText());
        Assert.NotEqual(baseAnswer.GetOutputText(), sql.GetOutputText());      // the adapter changes the greedy answer
    }
}
