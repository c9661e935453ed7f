using System.CommandLine;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Cli.Signals;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models.Chat;
using Tessera.Server;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Nn.Quantization;
using Tessera.Training.Parallel;
using Tessera.Distributed.Launch;
using Tessera.Cli.Ranks;
using Tessera.Tensors;
using Tessera.Training.Checkpoints;

namespace Tessera.Cli.Commands;

/// <summary>
/// tessera serve: the OpenAI-compatible server (Tessera.Server) over a checkpoint, a run or a Hugging Face directory.
/// Parse, build (the model verified as for generate), run until Ctrl-C or SIGTERM, report.
/// </summary>
public sealed class ServeCommand : Command
{
    private readonly Option<string> _model = SharedOptions.Model("a checkpoint, a run directory (its latest checkpoint) or a Hugging Face model directory");
    private readonly Option<Device> _device = SharedOptions.Device();
    private readonly Option<DType> _dtype = SharedOptions.DType("weights' dtype (bf16 needs cuda)", DType.F32, DType.BF16);
    private readonly Option<int> _threads = SharedOptions.Threads();
    private readonly Option<WeightQuantization> _quantize = SharedOptions.Quantize();
    private readonly Option<string> _host = new("--host") { Description = "address to listen on", HelpName = "ADDRESS", DefaultValueFactory = _ => "127.0.0.1" };
    private readonly Option<int> _port = SharedOptions.Int("--port", "N", "port to listen on (0: any free port, printed at start)", 8000, min: 0);
    private readonly Option<string?> _apiKey = new("--api-key") { Description = "clients must send 'Authorization: Bearer KEY'", HelpName = "KEY" };
    private readonly Option<string?> _name = new("--served-model-name") { Description = "the model's name in the API [default: the directory's name]", HelpName = "NAME" };
    private readonly Option<string?> _tokenizer = new("--tokenizer") { Description = "override the tokenizer found with the model", HelpName = "byte|DIR" };
    private readonly Option<int> _maxBatch = SharedOptions.Int("--max-batch", "N", "sequences per step", 64, min: 1);
    private readonly Option<int> _maxQueue = SharedOptions.Int("--max-queue", "N", "waiting requests before 429", 256, min: 0);
    private readonly Option<int> _storedResponses = SharedOptions.Int("--stored-responses", "N",
        "responses kept in memory for previous_response_id and GET /v1/responses/ID (least recently used evicted; 0: none)", 128, min: 0);
    private readonly Option<double?> _kvMemory = new("--kv-memory") { Description = "KV-cache pool in GiB [default: 0.25 on cpu, 4 on cuda]", HelpName = "GiB" };
    private readonly Option<DType?> _kvDType = SharedOptions.KvDType();
    private readonly Option<int> _blockSize = SharedOptions.Int("--block-size", "N", "positions per KV block", 16, min: 1);
    private readonly Option<int> _tokenBudget = SharedOptions.Int("--token-budget", "N", "tokens per step (longer prompts are prefilled in chunks)", 2048, min: 1);
    private readonly Option<int> _decodingStepTokens = SharedOptions.Int("--decoding-step-tokens", "N",
        "most tokens of a step in which sequences decode: their decodes first, prompt chunks fill the rest (bounds inter-token latency)", new SchedulerOptions().DecodingStepTokens, min: 1);
    private readonly Option<int?> _maxModelLen = SharedOptions.AtLeast(new Option<int?>("--max-model-len") { Description = "longest prompt + completion [default: the model's context]", HelpName = "N" }, 1);
    private readonly Option<bool> _noGraphs = SharedOptions.Flag("--no-graphs", "run every decode step eagerly (no CUDA graphs)");
    private readonly Option<int> _draftTokens = SharedOptions.AtMost(SharedOptions.Int("--draft-tokens", "N",
        "speculative decoding by prompt lookup: each request verifies up to N tokens a step guessed from its own text (0: off)", 0, min: 0),
        SpeculationOptions.MaxDraftTokens);
    private readonly Option<int> _tp = SharedOptions.Int("--tp", "N",
        "tensor-parallel ranks: the model split over N CPU thread ranks, each holding its own heads' KV cache in --kv-memory (rank 0 schedules)", 1, min: 1);
    private readonly Option<string?> _adapter = AdapterOption.Create();
    private readonly Option<string[]> _lora = LoraModulesOption.Create();
    private readonly LoraLoadingOptions _loraSlots = new();
    private readonly Option<string?> _draftModel = new("--draft-model")
    {
        Description = "speculative decoding with a smaller model of the same tokenizer (a run, checkpoint or Hugging Face directory) doing the guessing, whole on rank 0 under --tp; --draft-tokens defaults to 4 with it",
        HelpName = "DIR",
    };

    /// <summary>Declares the options.</summary>
    public ServeCommand(Terminal terminal) : base("serve",
        "an OpenAI-compatible HTTP server (continuous batching, paged KV cache): GET /v1/models, POST /v1/completions, POST /v1/chat/completions and /v1/responses (stream for SSE), GET /health, GET /metrics")
    {
        _model.Required = true;
        _model.HelpName = "DIR";
        foreach (var o in new Option[] { _model, _device, _dtype, _quantize, _threads, _host, _port, _apiKey, _name, _tokenizer, _maxBatch, _maxQueue, _storedResponses, _kvMemory,
            _kvDType, _blockSize, _tokenBudget, _decodingStepTokens, _maxModelLen, _noGraphs, _draftTokens, _draftModel, _adapter, _lora, _tp }.Concat(_loraSlots.All))
            Options.Add(o);
        SetAction(parse => Run(parse, terminal));
    }

    private int Run(ParseResult parse, Terminal terminal)
    {
        // Parse: the options into the server's and the engine's records, validated before anything is loaded.
        string dir = parse.GetValue(_model)!;
        var device = parse.GetValue(_device);
        var dtype = parse.GetValue(_dtype);
        bool cuda = device.Kind == DeviceKind.Cuda;
        if (dtype == DType.BF16 && !cuda) throw new UsageException("--dtype bf16 needs --device cuda: the CPU backend computes in f32 or f64");
        var serve = new ServeOptions
        {
            Host = parse.GetValue(_host)!,
            Port = parse.GetValue(_port),
            ApiKey = parse.GetValue(_apiKey),
            EnableLoraLoading = parse.GetValue(_loraSlots.EnableLoading),
            StoredResponses = parse.GetValue(_storedResponses),
            ModelName = parse.GetValue(_name) ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir))),
        };
        var engineOptions = new EngineOptions
        {
            Cache = new PagedKvCacheOptions
            {
                BlockSize = parse.GetValue(_blockSize),
                MemoryBytes = (long)((parse.GetValue(_kvMemory) ?? (cuda ? 4 : 0.25)) * (1L << 30)),
                DType = parse.GetValue(_kvDType),
            },
            Scheduler = new SchedulerOptions
            {
                MaxBatch = parse.GetValue(_maxBatch), MaxQueue = parse.GetValue(_maxQueue), TokenBudget = parse.GetValue(_tokenBudget),
                DecodingStepTokens = parse.GetValue(_decodingStepTokens),
            },
            MaxSequenceLength = parse.GetValue(_maxModelLen),
            RecordGraphs = !parse.GetValue(_noGraphs),
            Speculation = new SpeculationOptions
            {
                DraftTokens = parse.GetValue(_draftModel) is not null && !parse.Given(_draftTokens) ? 4 : parse.GetValue(_draftTokens),
            },
        };
        string? draftDir = parse.GetValue(_draftModel);
        if (draftDir is not null && engineOptions.Speculation.DraftTokens == 0)
            throw new UsageException("--draft-model needs --draft-tokens above 0 (or leave it out: 4)");
        int tp = parse.GetValue(_tp);
        var quantization = parse.GetValue(_quantize);
        var env = DistributedEnvironment.FromEnvironment();
        if (tp > 1 && cuda && !env.IsDistributed)
            throw new UsageException($"--tp {tp} on GPUs runs one process per GPU: tessera launch --nproc {tp} serve --tp {tp} --device cuda ...");
        if (env.IsDistributed && !cuda)
            throw new UsageException($"this process is rank {env.Rank} of {env.WorldSize} ({env.Source}): launched serving runs on GPUs through NCCL; add --device cuda, or use --tp N for CPU thread ranks in one process");
        if (env.IsDistributed && env.WorldSize != tp)
            throw new UsageException($"--tp {tp}: the launched world has {env.WorldSize} processes; serve splits the model over all of them (give --tp {env.WorldSize})");
        try
        {
            serve.Validate();
            engineOptions.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
        // The adapter is checked against the model before anything loads (every launched rank checks it alike).
        string? adapter = parse.GetValue(_adapter);
        string? adapterNote = adapter is null ? null : AdapterOption.Check(dir, adapter).Summary;
        var loraSlots = _loraSlots.Read(parse);
        var loraModules = LoraModulesOption.Check(parse.GetValue(_lora) ?? [], dir, serve.ModelName, tp, draftDir, adapter, loraSlots);

        if (env.IsDistributed)
        {
            // One process per GPU, launched: the world is one tensor-parallel group; rank 0 serves HTTP, the others follow its
            // steps (announced by a broadcast over the group).
            var gpu = (Tessera.Cuda.CudaBackend)BackendFactory.Create(Device.Cuda(env.LocalRank), parse.GetValue(_threads));
            using var nccl = new NcclMesh(gpu, env, new DeviceMesh(tp: tp), ParallelPlan.Megatron(sequenceParallel: false), TimeSpan.FromMinutes(5));
            return nccl.AbortOnFailure(() =>
            {
                var loaded = TrainedModel.Load(dir, gpu, dtype, nccl.TensorParallelism, quantization, adapter,
                    loraModules.Count > 0 ? loraModules : null, loraSlots);
                if (env.Rank == 0) return Serve(parse, terminal, loaded, gpu, engineOptions, serve, dtype, adapterNote, ranks: tp);
                InferenceEngine.Follow(loaded.Model, engineOptions);
                return ExitCodes.Success;
            });
        }
        if (tp == 1)
        {
            var backend = BackendFactory.Create(device, parse.GetValue(_threads));
            var loaded = Loading.Run(terminal, $"loading {dir}", () => TrainedModel.Load(dir, backend, dtype, quantization: quantization, adapter: adapter,
                loraModules: loraModules.Count > 0 ? loraModules : null, loraSlots: loraSlots));
            return Serve(parse, terminal, loaded, backend, engineOptions, serve, dtype, adapterNote);
        }
        // Tensor-parallel thread ranks: each loads its slices; rank 0 serves, the others run the steps it hands them.
        terminal.Note($"loading {dir} over {tp} tensor-parallel thread ranks");
        var codes = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            using var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var loaded = TrainedModel.Load(dir, ctx.Backend, dtype, tensor, quantization, adapter,
                loraModules.Count > 0 ? loraModules : null, loraSlots);   // each rank keeps its share of every adapter
            if (ctx.Rank == 0) return Serve(parse, terminal, loaded, ctx.Backend, engineOptions, serve, dtype, adapterNote, ranks: tp);
            InferenceEngine.Follow(loaded.Model, engineOptions);      // a failure on any rank aborts the others' collectives
            return ExitCodes.Success;
        }, TimeSpan.FromMinutes(10));
        return codes[0];
    }

    /// <summary>
    /// Serves <paramref name="loaded"/> (rank 0's part under tensor parallelism) until Ctrl-C or SIGTERM; <paramref name="adapter"/>
    /// describes the LoRA adapter merged into it, or is null.
    /// </summary>
    private int Serve(ParseResult parse, Terminal terminal, (Transformer Model, string Directory, string? Tokenizer) loaded, IBackend backend,
        EngineOptions engineOptions, ServeOptions serve, DType dtype, string? adapter, int ranks = 1)
    {
        // Build: the model verified as generate does (manifest, finite weights), its tokenizer and chat format.
        var (model, directory, trainedTokenizer) = loaded;
        string? draftDir = parse.GetValue(_draftModel);
        string tokenizerSpec = parse.GetValue(_tokenizer) ?? trainedTokenizer ?? directory;
        var tokenizer = TokenizerFactory.Create(tokenizerSpec);
        Tessera.Models.Tokenization.TokenizerLoader.CheckFits(tokenizer, model.Config.VocabSize, tokenizerSpec);
        var format = ChatFormat.Load(directory);
        // The end-of-turn token of the chat format ends completions too, when the tokenizer has it as one token.
        if (format.EosToken is { Length: > 0 } eos && tokenizer.Encode(eos) is [int eosId])
            engineOptions = engineOptions with { StopTokens = [.. engineOptions.StopTokens, eosId] };

        var draft = draftDir is null ? null : Loading.Run(terminal, $"loading the draft model {draftDir}", () => TrainedModel.Load(draftDir, backend, dtype, quantization: parse.GetValue(_quantize))).Model;

        // Run until Ctrl-C or SIGTERM; report.
        InferenceEngine engine;
        try
        {
            engine = new InferenceEngine(model, tokenizer, engineOptions, draft);
        }
        catch (Exception e) when (draft is not null && e is ArgumentException or NotSupportedException)
        {
            throw new UsageException($"--draft-model {draftDir}: {e.Message}");
        }
        using var _ = engine;
        using var signals = new StopSignals(terminal.Note, "shutting the server down");
        var server = OpenAiServer.StartAsync(engine, new ChatPrompt(format, tokenizer), serve).GetAwaiter().GetResult();
        var m = engine.Metrics;
        string split = ranks == 1 ? "" : $", split over {ranks} tensor-parallel ranks";
        string weights = model.Layout.Storage is QuantizedParameterStorage q ? $"{q.Format.ToString().ToLowerInvariant()} weights and {dtype}" : $"{dtype}";
        terminal.Line($"serving '{serve.ModelName}' ({model.Config.Family}, {model.Config.Layers} layers, {weights} on {backend.Device}{split}; " +
            $"{model.WeightBytes / (1024.0 * 1024):F1} MiB of weights) at {server.BaseAddress}");
        if (parse.GetValue(_quantize) == WeightQuantization.Fp8 && Fp8Support.Caveat(backend, dtype) is { Length: > 0 } caveat) terminal.Line($"  fp8: {caveat}");
        if (PretrainedModel.WeightsNote(directory) is { } weightsNote) terminal.Line($"  {weightsNote}");
        if (adapter is not null) terminal.Line($"  LoRA adapter {adapter} merged into the weights");
        foreach (var (name, i) in engine.AdapterNames.Select((n, i) => (n, i)))
            terminal.Line($"  LoRA adapter '{name}' served unmerged over the base{(i == 0 ? " (steps with adapter rows run eagerly, without CUDA graphs)" : "")}");
        if (model.ServedAdapters is { } slots)
            terminal.Line($"  LoRA slots: {slots.Slots} of rank up to {slots.MaxRank} on {string.Join(", ", slots.Targets.Select(t => t.Name))}" +
                (serve.EnableLoraLoading ? "; POST /v1/load_lora_adapter and /v1/unload_lora_adapter enabled" : ""));
        string kvKind = engineOptions.Cache.DType switch
        {
            DType.I8 => " (int8, a scale per position and head)",
            DType.F8E4M3 => " (fp8 e4m3, a scale per position and head)",
            _ => "",
        };
        terminal.Line($"  KV cache: {m.KvBlocksTotal} blocks of {engineOptions.Cache.BlockSize} positions{kvKind}; batch up to {engineOptions.Scheduler.MaxBatch}, " +
            $"{engineOptions.Scheduler.TokenBudget} tokens per step; context {engine.MaxSequenceLength}; chat template: {(format.IsFallback ? "ChatML fallback" : format.Template.Name)}");
        if (engineOptions.Speculation.Enabled)
            terminal.Line($"  speculative decoding: requests verify up to {engineOptions.Speculation.DraftTokens} tokens a step guessed " +
                (draft is null ? "from their own text" : $"by the draft model {draftDir} ({draft.Config.Layers} layers)"));
        if (model.Config.SlidingWindow > 0)
        {
            string pair = draft is null ? "" : draft.Config.SlidingWindow == 0 ? " (and the draft model's, which has none: every block is kept)"
                : $" (and the draft model's of {draft.Config.SlidingWindow})";
            terminal.Line($"  sliding window of {model.Config.SlidingWindow}: blocks left of it{pair} go back to the pool, a sequence holds at most " +
                $"{engine.BlocksHeldPerSequence} blocks");
        }
        terminal.Line("  Ctrl-C stops the server");
        terminal.Output.Flush();
        server.WaitAsync(signals.Token).GetAwaiter().GetResult();
        server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        terminal.Line($"stopped after {m.RequestsFinished} requests, {m.GeneratedTokens} generated tokens");
        return ExitCodes.Success;
    }
}
