using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Chat;
using Tessera.Server;
using Tessera.Tensors;
using Tessera.Training.Checkpoints;

namespace Tessera.Cli.Commands;

/// <summary>tessera serve: the OpenAI-compatible server over a checkpoint or a Hugging Face directory. Parse, build, run.</summary>
internal static class ServeCommand
{
    public const string Usage = """
        tessera serve --model DIR [options]
          DIR as for generate: a checkpoint, a run directory (its latest checkpoint) or a Hugging Face model directory.
          --device cpu|cuda [cpu]  --dtype f32|bf16 [f32; bf16 needs cuda]  --threads N (CPU)
          --host ADDRESS [127.0.0.1]  --port N [8000]  --api-key KEY (clients send 'Authorization: Bearer KEY')
          --served-model-name NAME [the directory's name]  --tokenizer byte|DIR (override the tokenizer found with the model)
          --max-batch N [64] sequences per step    --max-queue N [256] waiting requests before 429
          --kv-memory GiB [0.25 on cpu, 4 on cuda] KV-cache pool    --block-size N [16] positions per KV block
          --token-budget N [2048] tokens per step (prompts longer than this are prefilled in chunks)
          --max-model-len N [the model's context] longest prompt + completion
          --no-graphs  run every decode step eagerly (no CUDA graphs)
        Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream: true for SSE), GET /health, GET /metrics.
        """;

    public static int Run(CommandLineArguments args, TextWriter output)
    {
        string dir = args.String("model") ?? throw new UsageException("serve needs --model DIR");
        string device = args.String("device", "cpu")!;
        bool cuda = device.StartsWith("cuda", StringComparison.Ordinal);
        int threads = args.Int("threads", Environment.ProcessorCount);
        var dtype = args.String("dtype", "f32") switch
        {
            "f32" => DType.F32,
            "bf16" => DType.BF16,
            var other => throw new UsageException($"--dtype {other}: expected f32 or bf16"),
        };
        var serve = new ServeOptions
        {
            Host = args.String("host", "127.0.0.1")!,
            Port = args.Int("port", 8000),
            ApiKey = args.String("api-key"),
            ModelName = args.String("served-model-name") ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir))),
        };
        var engineOptions = new EngineOptions
        {
            Cache = new PagedKvCacheOptions
            {
                BlockSize = args.Int("block-size", 16),
                MemoryBytes = (long)(args.Double("kv-memory", cuda ? 4 : 0.25) * (1L << 30)),
            },
            Scheduler = new SchedulerOptions
            {
                MaxBatch = args.Int("max-batch", 64),
                MaxQueue = args.Int("max-queue", 256),
                TokenBudget = args.Int("token-budget", 2048),
            },
            MaxSequenceLength = args.String("max-model-len") is null ? null : args.Int("max-model-len", 0),
            RecordGraphs = !args.Flag("no-graphs"),
        };
        string? tokenizerSpec = args.String("tokenizer");
        args.ThrowOnUnknown("serve");
        if (dtype == DType.BF16 && !cuda) throw new UsageException("--dtype bf16 needs --device cuda: the CPU backend computes in f32 or f64");
        try
        {
            serve.Validate();
            engineOptions.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }

        var modelDir = GenerateCommand.ResolveModelDirectory(dir);
        var backend = BackendFactory.Create(device, threads);
        var checkpointConfig = File.Exists(Path.Combine(modelDir, "trainer_state.json")) ? TrainingCheckpoint.ReadState(modelDir).Model : null;
        var model = PretrainedModel.Load(modelDir, backend, dtype, checkpointConfig);
        var tokenizer = TokenizerFactory.Create(tokenizerSpec ?? GenerateCommand.TokenizerOf(modelDir));
        var format = ChatFormat.Load(modelDir);
        // The end-of-turn token of the chat format ends completions too, when the tokenizer has it as one token.
        if (format.EosToken is { Length: > 0 } eos && tokenizer.Encode(eos) is [int eosId])
            engineOptions = engineOptions with { StopTokens = [.. engineOptions.StopTokens, eosId] };

        using var engine = new InferenceEngine(model, tokenizer, engineOptions);
        using var shutdown = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; shutdown.Cancel(); };
        var server = OpenAiServer.StartAsync(engine, new ChatPrompt(format, tokenizer), serve).GetAwaiter().GetResult();
        var m = engine.Metrics;
        output.WriteLine($"serving '{serve.ModelName}' ({model.Config.Family}, {model.Config.Layers} layers, {dtype} on {backend.Device}) at {server.BaseAddress}");
        output.WriteLine($"  KV cache: {m.KvBlocksTotal} blocks of {engineOptions.Cache.BlockSize} positions; batch up to {engineOptions.Scheduler.MaxBatch}, " +
            $"{engineOptions.Scheduler.TokenBudget} tokens per step; context {engine.MaxSequenceLength}; chat template: {(format.IsFallback ? "ChatML fallback" : format.Template.Name)}");
        output.WriteLine("  Ctrl+C stops the server");
        output.Flush();
        server.WaitAsync(shutdown.Token).GetAwaiter().GetResult();
        server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        output.WriteLine($"stopped after {m.RequestsFinished} requests, {m.GeneratedTokens} generated tokens");
        return 0;
    }
}
