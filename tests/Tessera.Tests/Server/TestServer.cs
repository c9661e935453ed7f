using System.ClientModel;
using System.Net.Http.Json;
using System.Text.Json;
using OpenAI;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Models.Chat;
using Tessera.Models.Tokenization;
using Tessera.Server;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Tests.Server;

/// <summary>
/// A real server on a loopback port (port 0: the bound address is read back) in front of an engine serving a random
/// llama-debug model (byte vocabulary of 256, F32 on the CPU) with the byte tokenizer and the ChatML fallback template; the
/// byte tokenizer has no end-of-text token, and a test that needs one names a byte as the engine's stop token.
/// </summary>
public sealed class TestServer : IAsyncDisposable
{
    public const string Model = "tessera-debug";

    private TestServer(OpenAiServer server, InferenceEngine engine, ChatPrompt chat)
    {
        Server = server;
        Engine = engine;
        Chat = chat;
        Http = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
    }

    public OpenAiServer Server { get; }
    public InferenceEngine Engine { get; }
    public ChatPrompt Chat { get; }
    public HttpClient Http { get; }

    public static async Task<TestServer> StartAsync(int maxBatch = 8, int maxQueue = 64, int context = 256, string? apiKey = null, int budget = 64, int threads = 1,
        int draftTokens = 0, IReadOnlyCollection<int>? stopTokens = null, int storedResponses = 128)
    {
        var cpu = new CpuBackend(threads);
        var config = ModelPresets.Get("llama-debug") with { VocabSize = 256, MaxSequenceLength = context };
        var model = new Transformer(config, cpu, DType.F32);
        model.InitializeWeights(seed: 3);
        var tokenizer = new ByteTokenizer();
        var engine = new InferenceEngine(model, tokenizer, new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 32 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = maxBatch, TokenBudget = budget, MaxQueue = maxQueue },
            Speculation = new SpeculationOptions { DraftTokens = draftTokens },
            StopTokens = stopTokens ?? [],
        });
        var chat = new ChatPrompt(new ChatFormat(ChatTemplate.Fallback, null, null, IsFallback: true), tokenizer);
        var server = await OpenAiServer.StartAsync(engine, chat, new ServeOptions { Port = 0, ModelName = Model, ApiKey = apiKey, StoredResponses = storedResponses });
        return new TestServer(server, engine, chat);
    }

    /// <summary>An OpenAI SDK client of this server.</summary>
    public OpenAIClient Client(string key = "unused") =>
        new(new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(Server.BaseAddress, "v1") });

    /// <summary>POSTs a JSON body given as text; returns the status and the parsed body.</summary>
    public async Task<(int Status, JsonElement Body, HttpResponseMessage Response)> PostAsync(string path, string json, string? key = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, System.Text.Encoding.UTF8, "application/json") };
        if (key is not null) request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        var response = await Http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        var body = text.Length > 0 && text.TrimStart().StartsWith('{') ? JsonDocument.Parse(text).RootElement.Clone() : default;
        return ((int)response.StatusCode, body, response);
    }

    /// <summary>The value of one sample in /metrics, e.g. "tessera_kv_blocks_in_use" or "tessera_http_responses_total{code=\"400\"}".</summary>
    public async Task<double> MetricAsync(string sample)
    {
        var text = await Http.GetStringAsync("metrics");
        foreach (var line in text.Split('\n'))
            if (line.StartsWith(sample + " ", StringComparison.Ordinal)) return double.Parse(line[(sample.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        return 0;
    }

    /// <summary>Status codes of 500 and above that /metrics counted.</summary>
    public async Task<List<string>> ServerErrorsAsync()
    {
        var text = await Http.GetStringAsync("metrics");
        return text.Split('\n').Where(l => l.StartsWith("tessera_http_responses_total{code=\"5", StringComparison.Ordinal)).ToList();
    }

    /// <summary>Waits until /metrics shows no KV block in use (the engine releases blocks between steps).</summary>
    public async Task<double> BlocksInUseAfterSettlingAsync()
    {
        double blocks = 0;
        for (int i = 0; i < 200; i++)
        {
            blocks = await MetricAsync("tessera_kv_blocks_in_use");
            if (blocks == 0) break;
            await Task.Delay(10);
        }
        return blocks;
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        Engine.Dispose();
    }
}
