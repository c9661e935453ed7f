using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using OpenAI;
using OpenAI.Chat;
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
/// POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's) on the real server through Kestrel on loopback, completions
/// through the official OpenAI .NET SDK (plain HttpClient for the two endpoints, which the SDK does not have). A loaded adapter
/// answers as the same adapter given at start-up and as its merge does, /v1/models follows loads and unloads at once, an
/// unloaded name is the usual 404 model_not_found, and every refusal is an error object that changes nothing. F64 on the CPU,
/// so the merged model differs only by the F32 rounding of its weights, far below the logits' spread (greedy text compared).
/// </summary>
public sealed class LoraLoadingServerTests : IDisposable
{
    private const string Key = "sekret";
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-lora-loading-server-").FullName;
    private readonly CpuBackend _cpu = new(1);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static async Task<OpenAiServer> Start(Transformer model, string name, bool loading = true, string? key = Key)
    {
        var tokenizer = new ByteTokenizer();
        var engine = new InferenceEngine(model, tokenizer, new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 32, MaxQueue = 64 },
        });
        var chat = new ChatPrompt(new ChatFormat(ChatTemplate.Fallback, null, null, IsFallback: true), tokenizer);
        return await OpenAiServer.StartAsync(engine, chat, new ServeOptions { Port = 0, ModelName = name, ApiKey = key, EnableLoraLoading = loading });
    }

    private static async Task<string> Ask(OpenAiServer server, string model, string? key = Key)
    {
        var client = new OpenAIClient(new ApiKeyCredential(key ?? "unused"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseAddress, "v1") }).GetChatClient(model);
        ChatCompletion answer = await client.CompleteChatAsync([new UserChatMessage("Name a colour")],
            new ChatCompletionOptions { MaxOutputTokenCount = 10, Temperature = 0 }, TestContext.Current.CancellationToken);
        Assert.Equal(model, answer.Model);
        return string.Concat(answer.Content.Select(p => p.Text));
    }

    private static HttpClient Http(OpenAiServer server, string? key = Key)
    {
        var http = new HttpClient { BaseAddress = server.BaseAddress };
        if (key is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return http;
    }

    private static async Task<(HttpStatusCode Status, string Body)> Post(HttpClient http, string path, string json)
    {
        using var response = await http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
        return (response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }

    private static string Load(string name, string path) =>
        System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string> { ["lora_name"] = name, ["lora_path"] = path });

    private static async Task<string[]> Models(HttpClient http)
    {
        var models = System.Text.Json.JsonDocument.Parse(await http.GetStringAsync("v1/models", TestContext.Current.CancellationToken)).RootElement;
        return models.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()!).ToArray();
    }

    /// <summary>An OpenAI error object's code (and that the body is one).</summary>
    private static string? CodeOf(string body) =>
        System.Text.Json.JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("code").GetString();

    /// <summary>
    /// The base alone at start; an adapter loaded over HTTP is listed at once and answers the SDK's greedy chat completion as the
    /// same adapter served with --lora at start-up and as its merge served alone; unloaded, it leaves /v1/models and requests for it
    /// are 404 model_not_found; unloading it again is 404; loaded again it answers again.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task LoadedAdapterAnswersAsAtStartUpAndUnloadedIsNotFound()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 651);
        var slots = new LoraSlotOptions { MaxLoras = 2, RuntimeLoading = true };
        await using var server = await Start(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraSlots: slots), "base");
        using var http = Http(server);
        Assert.Equal(["base"], await Models(http));
        var (status, body) = await Post(http, "v1/load_lora_adapter", Load("sql", c.Adapter));
        Assert.True(status == HttpStatusCode.OK, body);
        Assert.Contains("'sql'", body);
        Assert.Equal(["base", "sql"], await Models(http));
        string loaded = await Ask(server, "sql"), plain = await Ask(server, "base");

        await using (var startup = await Start(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("sql", c.Adapter)], loraSlots: slots), "base"))
            Assert.Equal(await Ask(startup, "sql"), loaded);
        await using (var merged = await Start(PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter), "merged"))
            Assert.Equal(await Ask(merged, "merged"), loaded);
        Assert.NotEqual(plain, loaded);                                                // the adapter changes the greedy answer

        (status, body) = await Post(http, "v1/unload_lora_adapter", """{"lora_name": "sql"}""");
        Assert.True(status == HttpStatusCode.OK, body);
        Assert.Equal(["base"], await Models(http));
        var error = await Assert.ThrowsAsync<ClientResultException>(() => Ask(server, "sql"));
        Assert.Equal(404, error.Status);
        Assert.Contains("model_not_found", error.Message);
        (status, body) = await Post(http, "v1/unload_lora_adapter", """{"lora_name": "sql"}""");
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Equal("model_not_found", CodeOf(body));
        Assert.Equal(plain, await Ask(server, "base"));

        for (int attempt = 0; ; attempt++)                                             // the slot frees once drained (at once here)
        {
            (status, body) = await Post(http, "v1/load_lora_adapter", Load("sql", c.Adapter));
            if (status != HttpStatusCode.Conflict || attempt == 100) break;
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
        Assert.True(status == HttpStatusCode.OK, body);
        Assert.Equal(loaded, await Ask(server, "sql"));
    }

    /// <summary>
    /// Each bad load or unload is an OpenAI error object, never a 5xx, and leaves /v1/models and the served answers unchanged:
    /// a wrong API key (401), malformed JSON and a missing field (400), a path that is no adapter directory, an adapter of another
    /// model family (its target modules), a rank above --max-lora-rank (400), a name served already or the base's (409), no free
    /// slot (409), an unknown name to unload (404).
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task RefusedLoadsAreErrorObjectsThatChangeNothing()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", ["q", "v", "down"], 661);
        string gpt2 = Path.Combine(_dir, "gpt2-adapter"), big = Path.Combine(_dir, "big"), second = Path.Combine(_dir, "second");
        AdapterCase.WriteAdapter(gpt2, ModelPresets.Get("gpt2-debug") with { VocabSize = 256, MaxSequenceLength = 128 }, ["c_attn"], 662);
        AdapterCase.WriteAdapter(big, c.Config, ["q"], 663, c.Base, rank: 32);
        AdapterCase.WriteAdapter(second, c.Config, ["o", "up"], 664, c.Base, rank: 2);
        await using var server = await Start(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("sql", c.Adapter)],
            loraSlots: new LoraSlotOptions { MaxLoras = 2, RuntimeLoading = true }), "base");
        using var http = Http(server);
        string before = await Ask(server, "sql");
        string[] served = ["base", "sql"];

        async Task Refused(HttpStatusCode expected, string code, string message, string path, string json, HttpClient? client = null)
        {
            var (status, body) = await Post(client ?? http, path, json);
            Assert.True(status == expected, $"{json}: {(int)status} {body}");
            Assert.Equal(code, CodeOf(body));
            Assert.Contains(message, System.Text.Json.JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("message").GetString());
            Assert.Equal(served, await Models(http));
        }
        using (var wrongKey = Http(server, "wrong"))
            await Refused(HttpStatusCode.Unauthorized, "invalid_api_key", "Incorrect API key", "v1/load_lora_adapter", Load("x", second), wrongKey);
        await Refused(HttpStatusCode.BadRequest, "invalid_json", "not valid JSON", "v1/load_lora_adapter", """{"lora_name": "x", """);
        await Refused(HttpStatusCode.BadRequest, "missing_required_parameter", "lora_path", "v1/load_lora_adapter", """{"lora_name": "x"}""");
        await Refused(HttpStatusCode.BadRequest, "invalid_value", "no such adapter directory", "v1/load_lora_adapter", Load("x", Path.Combine(_dir, "nowhere")));
        await Refused(HttpStatusCode.BadRequest, "invalid_value", "names no layer of a Llama model", "v1/load_lora_adapter", Load("x", gpt2));
        await Refused(HttpStatusCode.BadRequest, "invalid_value", "--max-lora-rank 32", "v1/load_lora_adapter", Load("x", big));
        await Refused(HttpStatusCode.Conflict, "conflict", "served already", "v1/load_lora_adapter", Load("sql", second));
        await Refused(HttpStatusCode.Conflict, "conflict", "the served base model's name", "v1/load_lora_adapter", Load("base", second));
        await Refused(HttpStatusCode.NotFound, "model_not_found", "no LoRA adapter named 'x'", "v1/unload_lora_adapter", """{"lora_name": "x"}""");
        var (ok, text) = await Post(http, "v1/load_lora_adapter", Load("poet", second));
        Assert.True(ok == HttpStatusCode.OK, text);
        served = ["base", "sql", "poet"];
        await Refused(HttpStatusCode.Conflict, "conflict", "every one of the 2 LoRA slots is taken", "v1/load_lora_adapter", Load("x", second));
        Assert.Equal(before, await Ask(server, "sql"));
        Assert.DoesNotContain(server.ResponsesByStatus.Keys, s => s >= 500);
    }

    /// <summary>Without --enable-lora-loading the two endpoints do not exist: 404 unknown_url, as any unknown route.</summary>
    [Fact(Timeout = 120_000)]
    public async Task LoadingDisabledEndpointsAreUnknownRoutes()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", ["q", "v"], 671);
        await using var server = await Start(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("sql", c.Adapter)]), "base", loading: false);
        using var http = Http(server);
        foreach (var path in new[] { "v1/load_lora_adapter", "v1/unload_lora_adapter" })
        {
            var (status, body) = await Post(http, path, Load("x", c.Adapter));
            Assert.Equal(HttpStatusCode.NotFound, status);
            Assert.Equal("unknown_url", CodeOf(body));
        }
        Assert.Equal(["base", "sql"], await Models(http));
    }
}
