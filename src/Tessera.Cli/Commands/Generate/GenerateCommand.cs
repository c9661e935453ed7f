using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Spectre.Console;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Inference.Speculation;
using Tessera.Inference.Serving;
using Tessera.Tensors;
using Tessera.Models;
using Tessera.Training.Checkpoints;
using Tessera.Training.Parallel;
using Tessera.Cli.Ranks;
using Tessera.Distributed.Launch;
using Tessera.Distributed.Mesh;
using Tessera.Nn.Parallel;
using Tessera.Nn.Quantization;

namespace Tessera.Cli.Commands.Generate;

/// <summary>tessera generate: streams a continuation of a prompt from a checkpoint, a run or a Hugging Face directory.</summary>
public sealed class GenerateCommand : Command
{
    private readonly Option<string> _model = SharedOptions.Model("a checkpoint (step_NNNNNN), a run directory or its checkpoints folder (the latest checkpoint), or a Hugging Face model directory");
    private readonly Option<string> _prompt = new("--prompt") { Description = "the text to continue", HelpName = "TEXT", Required = true };
    private readonly Option<int> _maxTokens = SharedOptions.MaxTokens(128);
    private readonly Option<double> _temperature = SharedOptions.Double("--temperature", "X", "softmax temperature; 0 is greedy (the most likely token every time, which tends to loop)", 0.8, min: 0);
    private readonly Option<int> _topK = SharedOptions.Int("--top-k", "K", "sample among the K most likely tokens (0: all)", 40, min: 0);
    private readonly Option<double> _topP = SharedOptions.Double("--top-p", "P", "sample among the most likely tokens whose probabilities sum to P (1: all)", 1.0, min: 0, max: 1, minExclusive: true);
    private readonly Option<int> _seed = SharedOptions.Seed("seed of the sampling", 0);
    private readonly Option<string[]> _stop = new("--stop") { Description = "end generation where this text appears (not printed); repeatable", HelpName = "TEXT", AllowMultipleArgumentsPerToken = false };
    private readonly Option<int[]> _stopIds = new("--stop-ids") { Description = "end generation at these token ids (besides the tokenizer's end of text); comma-separated or repeated", HelpName = "ID,..." };
    private readonly Option<Device> _device = SharedOptions.Device();
    private readonly Option<int> _threads = SharedOptions.Threads();
    private readonly Option<DType> _dtype = SharedOptions.DType("weights' dtype: bf16 (GPU only) halves the bytes each decoded token reads", DType.F32, DType.BF16);
    private readonly Option<WeightQuantization> _quantize = SharedOptions.Quantize();
    private readonly Option<bool> _json = SharedOptions.Flag("--json", "constrain the continuation to one JSON object (structured output), printed alone; it ends when the object is whole");
    private readonly Option<FileInfo?> _jsonSchema = new("--json-schema")
    {
        Description = "constrain the continuation to one JSON object of the schema in FILE (the subset docs/architecture.md lists), printed alone; it ends when the object is whole",
        HelpName = "FILE",
    };
    private readonly Option<string?> _tokenizer = new("--tokenizer") { Description = "override the tokenizer found with the model", HelpName = "byte|DIR" };
    private readonly Option<int> _draftTokens = SharedOptions.AtMost(SharedOptions.Int("--draft-tokens", "N",
        "speculative decoding by prompt lookup: each step also verifies up to N tokens guessed from the text so far; greedy gives the same text, sampling the same distribution, in fewer steps where the text repeats itself (0: off)", 0, min: 0),
        SpeculationOptions.MaxDraftTokens);
    private readonly Option<string?> _draftModel = new("--draft-model")
    {
        Description = "speculative decoding with a smaller model of the same tokenizer (a run, checkpoint or Hugging Face directory) doing the guessing; --draft-tokens defaults to 4 with it",
        HelpName = "DIR",
    };
    private readonly Option<string?> _adapter = AdapterOption.Create();
    private readonly Option<int> _tp = SharedOptions.Int("--tp", "N", "tensor-parallel ranks: the model split over N CPU thread ranks, or over the launched GPU processes ('tessera launch --nproc N generate --tp N --device cuda')", 1, min: 1);

    /// <summary>Declares the options.</summary>
    public GenerateCommand(Terminal terminal) : base("generate", "continue a prompt from a checkpoint, a run or a Hugging Face model directory")
    {
        _model.Required = true;
        _model.HelpName = "DIR";
        _stopIds.CustomParser = r =>
        {
            var ids = new List<int>();
            foreach (var token in r.Tokens)
                foreach (var part in token.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                    if (int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id) && id >= 0) ids.Add(id);
                    else r.AddError($"--stop-ids: '{part}' is not a token id");
            return ids.ToArray();
        };
        foreach (var o in new Option[] { _model, _prompt, _maxTokens, _temperature, _topK, _topP, _seed, _stop, _stopIds, _device, _threads, _dtype, _quantize, _tokenizer, _adapter, _tp, _draftTokens, _draftModel, _json, _jsonSchema })
            Options.Add(o);
        SetAction(parse => Run(parse, terminal));
    }

    private int Run(ParseResult parse, Terminal terminal)
    {
        var device = parse.GetValue(_device);
        var dtype = parse.GetValue(_dtype);
        if (dtype == DType.BF16 && device.Kind != DeviceKind.Cuda)
            throw new UsageException("--dtype bf16 needs --device cuda: the CPU backend computes in f32 or f64");
        var sampling = new SamplingOptions
        {
            Temperature = parse.GetValue(_temperature), TopK = parse.GetValue(_topK), TopP = parse.GetValue(_topP), Seed = (ulong)parse.GetValue(_seed),
        }.Validate();
        string prompt = parse.GetValue(_prompt)!;
        int maxTokens = parse.GetValue(_maxTokens);

        string? draftModel = parse.GetValue(_draftModel);
        int draftTokens = draftModel is not null && !parse.Given(_draftTokens) ? 4 : parse.GetValue(_draftTokens);
        if (draftModel is not null && draftTokens == 0)
            throw new UsageException("--draft-model needs --draft-tokens above 0 (or leave it out: 4)");
        var request = new Request(parse.GetValue(_model)!, prompt, maxTokens, sampling, parse.GetValue(_stop) ?? [], parse.GetValue(_stopIds) ?? [],
            dtype, parse.GetValue(_tokenizer)) { DraftTokens = draftTokens, DraftModel = draftModel, Grammar = Grammar(parse), Quantization = parse.GetValue(_quantize) };
        if (request.Grammar is not null && (draftTokens > 0 || draftModel is not null))
            throw new UsageException("--json and --json-schema run without speculative decoding: leave out --draft-tokens and --draft-model");
        int tp = parse.GetValue(_tp);
        var quantization = parse.GetValue(_quantize);
        var env = DistributedEnvironment.FromEnvironment();
        if (draftModel is not null && (tp > 1 || env.IsDistributed))
            throw new UsageException("--draft-model runs on one device: leave out --tp (and tessera launch)");
        // The adapter is checked against the model before anything loads (every launched rank checks it alike).
        string? adapter = parse.GetValue(_adapter);
        if (adapter is not null)
        {
            var merge = AdapterOption.Check(request.Model, adapter);
            if (env.Rank == 0) terminal.Note($"merging the LoRA adapter {merge.Summary} into {request.Model} as it loads");
        }
        if (env.IsDistributed && device.Kind == DeviceKind.Cuda)
        {
            // One process per GPU, launched: the world is one tensor-parallel group; rank 0 prints.
            if (env.WorldSize != tp)
                throw new UsageException($"--tp {tp}: the launched world has {env.WorldSize} processes; generate splits the model over all of them (give --tp {env.WorldSize})");
            var backend = (Tessera.Cuda.CudaBackend)BackendFactory.Create(Device.Cuda(env.LocalRank), parse.GetValue(_threads));
            using var nccl = new NcclMesh(backend, env, new DeviceMesh(tp: tp), ParallelPlan.Megatron(sequenceParallel: false), TimeSpan.FromMinutes(5));
            var quiet = Terminal.Create(TextWriter.Null, TextWriter.Null, false);
            return nccl.AbortOnFailure(() =>
                Generate(env.Rank == 0 ? terminal : quiet, request, (b, d) => TrainedModel.Load(request.Model, b, d, nccl.TensorParallelism, quantization, adapter), backend));
        }
        if (env.IsDistributed)
            throw new UsageException($"this process is rank {env.Rank} of {env.WorldSize} ({env.Source}): launched generation runs on GPUs through NCCL; add --device cuda, or use --tp N for CPU thread ranks in one process");
        if (tp == 1)
        {
            var backend = BackendFactory.Create(device, parse.GetValue(_threads));
            return Generate(terminal, request, (b, d) => Loading.Run(terminal, $"loading {request.Model}",
                () => TrainedModel.Load(request.Model, b, d, quantization: quantization, adapter: adapter)), backend);
        }
        if (device.Kind != DeviceKind.Cpu)
            throw new UsageException($"--tp {tp} in one process runs CPU thread ranks; on GPUs start one process per GPU: tessera launch --nproc {tp} generate --tp {tp} --device cuda ...");
        // CPU thread ranks: each loads its slices and runs the same generation (the sampled tokens agree on every rank); rank 0 prints.
        terminal.Note($"loading {request.Model} over {tp} tensor-parallel thread ranks");
        var codes = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            using var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var quiet = Terminal.Create(TextWriter.Null, TextWriter.Null, false);
            return Generate(ctx.Rank == 0 ? terminal : quiet, request, (b, d) => TrainedModel.Load(request.Model, b, d, tensor, quantization, adapter), ctx.Backend);
        }, TimeSpan.FromMinutes(10));
        return codes[0];
    }

    /// <summary>--json (any object) or --json-schema FILE (an object of the schema), compiled; a bad file or schema is a usage error naming the option.</summary>
    private Tessera.Inference.Constraints.JsonGrammar? Grammar(ParseResult parse)
    {
        var file = parse.GetValue(_jsonSchema);
        if (file is null) return parse.GetValue(_json) ? Tessera.Inference.Constraints.JsonGrammar.AnyObject() : null;
        if (parse.GetValue(_json)) throw new UsageException("--json and --json-schema: give one (--json-schema FILE already asks for JSON)");
        if (!file.Exists) throw new UsageException($"--json-schema {file}: no such file");
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(file.FullName));
            return Tessera.Inference.Constraints.JsonGrammar.FromSchema(doc.RootElement.Clone(), Path.GetFileNameWithoutExtension(file.Name));
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new UsageException($"--json-schema {file}: not JSON: {e.Message}");
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--json-schema {file}: {e.Message}");
        }
    }

    /// <summary>What was asked, read from the command line.</summary>
    private sealed record Request(string Model, string Prompt, int MaxTokens, SamplingOptions Sampling, string[] Stop, int[] StopIds, DType DType, string? Tokenizer)
    {
        /// <summary>Speculative decoding's draft tokens a step (0: off).</summary>
        public int DraftTokens { get; init; }

        /// <summary>The draft model's directory, or null for prompt lookup.</summary>
        public string? DraftModel { get; init; }

        /// <summary>How the model and the draft model keep their weights (--quantize).</summary>
        public WeightQuantization Quantization { get; init; }

        /// <summary>The JSON grammar the continuation keeps to (--json, --json-schema), or null.</summary>
        public Tessera.Inference.Constraints.JsonGrammar? Grammar { get; init; }
    }

    /// <summary>Loads the model (or this rank's part of it), then streams the continuation to <paramref name="terminal"/>.</summary>
    private static int Generate(Terminal terminal, Request request,
        Func<IBackend, DType, (Tessera.Models.Transformer Model, string Directory, string? Tokenizer)> load, IBackend backend)
    {
        string prompt = request.Prompt;
        int maxTokens = request.MaxTokens;
        // Build: the model (manifest verified, weights checked finite), then its tokenizer.
        var (model, directory, trainedTokenizer) = load(backend, request.DType);
        string tokenizerSpec = request.Tokenizer ?? trainedTokenizer ?? directory;
        var tokenizer = TokenizerFactory.Create(tokenizerSpec);
        Tessera.Models.Tokenization.TokenizerLoader.CheckFits(tokenizer, model.Config.VocabSize, tokenizerSpec);
        // transformers' generate stops on every eos_token_id of generation_config.json (Llama 3: end_of_text and eot_id).
        var stops = new HashSet<int>(Tessera.Models.HuggingFace.GenerationDefaults.Load(directory).EosTokenIds);
        foreach (var id in request.StopIds) stops.Add(id);
        if (tokenizer.EndOfTextId is int eot) stops.Add(eot);
        var ids = tokenizer.EncodeWithSpecialTokens(prompt);   // BOS first where the tokenizer puts one (Llama, Mistral)
        int context = model.Config.MaxSequenceLength;
        if (ids.Length + maxTokens > context && ids.Length < context)
            terminal.Note($"note: the model's context holds {context} positions: after the {ids.Length}-token prompt there is room for {context - ids.Length} new tokens, not {maxTokens}");

        // Run: stream tokens as they come, holding back text that may begin a stop string.
        var filter = new StopStringMatcher(request.Stop);
        var decoder = tokenizer.CreateIncrementalDecoder();
        var draft = request.DraftModel is { } draftDir
            ? Loading.Run(terminal, $"loading the draft model {draftDir}", () => TrainedModel.Load(draftDir, backend, request.DType, quantization: request.Quantization)).Model
            : null;
        TextGenerator generator;
        try
        {
            generator = new TextGenerator(model, draft);
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--draft-model {request.DraftModel}: {e.Message}");
        }
        if (request.Grammar is null) terminal.Output.Write(prompt);   // structured output prints the document alone
        var clock = Stopwatch.StartNew();
        int produced = 0;
        var options = new GenerationOptions
        {
            MaxNewTokens = maxTokens, Sampling = request.Sampling, StopTokens = stops,
            Speculation = new SpeculationOptions { DraftTokens = request.DraftTokens },
            Grammar = request.Grammar,
            Tokenizer = tokenizer,
            BoundedWindowCache = request.Grammar is null,
        };
        foreach (var id in generator.Generate(ids, options))
        {
            produced++;
            terminal.Output.Write(filter.Push(decoder.Push(id)));
            terminal.Output.Flush();
            if (filter.Stopped) break;
        }
        if (!filter.Stopped) terminal.Output.Write(filter.Push(decoder.Flush()) + filter.Flush());
        terminal.Output.WriteLine();

        // Report (standard error, so that standard output is the text alone).
        string why = generator.LastRunDocumentComplete ? "the end of the JSON document"
            : filter.Stopped ? "a --stop text"
            : produced >= maxTokens ? "--max-tokens"
            : ids.Length + produced >= context ? $"the model's context of {context} positions is full"
            : "an end-of-text token";
        double seconds = clock.Elapsed.TotalSeconds;
        string drafts = request.DraftTokens > 0 ? $"; {generator.LastRunAcceptedDraftTokens} of {generator.LastRunDraftTokens} draft tokens accepted" : "";
        string weights = model.Layout.Storage is QuantizedParameterStorage q ? $"; {q.Format.ToString().ToLowerInvariant()} weights, {model.WeightBytes / (1024.0 * 1024):F1} MiB" : "";
        if (request.Quantization == WeightQuantization.Fp8 && Fp8Support.Caveat(model.Backend, request.DType) is { Length: > 0 } caveat) weights += $" ({caveat})";
        if (Directory.Exists(request.Model) && PretrainedModel.WeightsNote(TrainedModel.Resolve(request.Model)) is { } weightsNote) weights += $"; {weightsNote}";
        terminal.Note(string.Create(CultureInfo.InvariantCulture,
            $"[{produced} tokens in {seconds:F2} s, {produced / Math.Max(seconds, 1e-9):F1} tok/s; stopped at {why}{drafts}{weights}]"));
        return 0;
    }
}
