using System.ClientModel;
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
/// The OpenAI endpoints over a base with two LoRA adapters served unmerged (multi-LoRA), through the official OpenAI .NET SDK:
/// /v1/models lists the base and both adapters, a greedy chat completion to each name answers as a server of the model with that
/// adapter merged (<c>--adapter</c>) does alone, and an unknown name is the usual 404 model_not_found. F64 on the CPU, so the
/// merged and unmerged models differ only by the F32 rounding of the merged weights, far below the logits' spread.
/// </summary>
public sealed class MultiLoraServerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-multilora-server-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static async Task<OpenAiServer> Start(Transformer model, string name)
    {
        var tokenizer = new ByteTokenizer();
        var engine = new InferenceEngine(model, tokenizer, new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 32, MaxQueue = 64 },
        });
        var chat = new ChatPrompt(new ChatFormat(ChatTemplate.Fallback, null, null, IsFallback: true), tokenizer);
        return await OpenAiServer.StartAsync(engine, chat, new ServeOptions { Port = 0, ModelName = name });
    }

    private static ChatClient Chat(OpenAiServer server, string model) =>
        new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseAddress, "v1") }).GetChatClient(model);

    private static async Task<string> Ask(OpenAiServer server, string model)
    {
        ChatCompletion answer = await Chat(server, model).CompleteChatAsync([new UserChatMessage("Name a colour")],
            new ChatCompletionOptions { MaxOutputTokenCount = 10, Temperature = 0 }, TestContext.Current.CancellationToken);
        Assert.Equal(model, answer.Model);
        Assert.Equal(10, answer.Usage.OutputTokenCount);
        return string.Concat(answer.Content.Select(p => p.Text));
    }

    [Fact(Timeout = 120_000)]
    public async Task EachModelNameAnswersAsItsMergedModelServedAlone()
    {
        var cpu = new CpuBackend(1);
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 561);
        string second = Path.Combine(_dir, "adapter2");
        AdapterCase.WriteAdapter(second, c.Config, ["q", "v", "down"], 568, c.Base);
        var served = PretrainedModel.Load(c.Base, cpu, DType.F64, loraModules: [new LoraModule("sql", c.Adapter), new LoraModule("poet", second)]);
        await using var server = await Start(served, "base");

        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var models = System.Text.Json.JsonDocument.Parse(await http.GetStringAsync("v1/models", TestContext.Current.CancellationToken)).RootElement;
        Assert.Equal(["base", "sql", "poet"], models.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()!).ToArray());

        // Asked at once, so the three names share the engine's batches.
        var answers = await Task.WhenAll(Ask(server, "base"), Ask(server, "sql"), Ask(server, "poet"));
        string[] expected = new string[3];
        (string? Adapter, int Index)[] references = [(null, 0), (c.Adapter, 1), (second, 2)];
        foreach (var (adapter, index) in references)
        {
            await using var alone = await Start(PretrainedModel.Load(c.Base, cpu, DType.F64, adapter: adapter), "alone");
            expected[index] = await Ask(alone, "alone");
        }
        Assert.Equal(expected, answers);
        Assert.NotEqual(expected[0], expected[1]);                   // the adapters change the greedy answer
        Assert.NotEqual(expected[0], expected[2]);

        var error = await Assert.ThrowsAsync<ClientResultException>(() => Ask(server, "gpt-4o"));
        Assert.Equal(404, error.Status);
        Assert.Contains("'gpt-4o' does not exist", error.Message);
        Assert.Contains("'sql'", error.Message);
    }
}
