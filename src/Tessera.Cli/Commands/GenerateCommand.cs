using System.Diagnostics;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training.Checkpoints;

namespace Tessera.Cli.Commands;

/// <summary>tessera generate: streams a continuation of a prompt from a checkpoint or a Hugging Face directory.</summary>
internal static class GenerateCommand
{
    public const string Usage = """
        tessera generate --model DIR --prompt TEXT [options]
          DIR is a checkpoint (step_NNNNNN), a run's checkpoints folder (its latest is used), a run directory,
          or a Hugging Face model directory (config.json, model.safetensors or shards, tokenizer files).
          --max-tokens N [128]  --temperature X [0: greedy]  --top-k K [0]  --top-p P [1]  --seed N [0]
          --stop TEXT (repeatable as comma list of token ids with --stop-ids 1,2)  --device cpu|cuda [cpu]  --threads N
          --dtype f32|bf16 [f32]  bf16 weights (GPU only) halve the bytes each decoded token reads
          --tokenizer byte|DIR    override the tokenizer found with the model
        """;

    public static int Run(CommandLineArguments args, TextWriter output)
    {
        string dir = args.String("model") ?? throw new UsageException("generate needs --model DIR");
        string prompt = args.String("prompt") ?? throw new UsageException("generate needs --prompt TEXT");
        int maxTokens = args.Int("max-tokens", 128);
        var sampling = new SamplingOptions
        {
            Temperature = args.Double("temperature", 0),
            TopK = args.Int("top-k", 0),
            TopP = args.Double("top-p", 1.0),
            Seed = (ulong)args.Int("seed", 0),
        };
        string? stopIds = args.String("stop-ids");
        string device = args.String("device", "cpu")!;
        int threads = args.Int("threads", Environment.ProcessorCount);
        string? tokenizerSpec = args.String("tokenizer");
        var dtype = args.String("dtype", "f32") switch
        {
            "f32" => DType.F32,
            "bf16" => DType.BF16,
            var other => throw new UsageException($"--dtype {other}: expected f32 or bf16"),
        };
        args.ThrowOnUnknown("generate");
        if (dtype == DType.BF16 && !device.StartsWith("cuda", StringComparison.Ordinal))
            throw new UsageException("--dtype bf16 needs --device cuda: the CPU backend computes in f32 or f64");
        sampling.Validate();
        if (maxTokens <= 0) throw new UsageException($"--max-tokens ({maxTokens}) must be positive");

        var modelDir = ResolveModelDirectory(dir);
        var backend = BackendFactory.Create(device, threads);
        var checkpointConfig = File.Exists(Path.Combine(modelDir, "trainer_state.json")) ? TrainingCheckpoint.ReadState(modelDir).Model : null;
        var model = PretrainedModel.Load(modelDir, backend, dtype, checkpointConfig);
        tokenizerSpec ??= TokenizerOf(modelDir);
        var tokenizer = TokenizerFactory.Create(tokenizerSpec);
        Tessera.Models.Tokenization.TokenizerLoader.CheckFits(tokenizer, model.Config.VocabSize, tokenizerSpec);

        // transformers' generate stops on every eos_token_id of generation_config.json (Llama 3: end_of_text and eot_id).
        var stops = new HashSet<int>(Tessera.Models.HuggingFace.GenerationDefaults.Load(modelDir).EosTokenIds);
        if (tokenizer.EndOfTextId is int eot) stops.Add(eot);
        if (stopIds is not null)
            foreach (var s in stopIds.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                stops.Add(int.TryParse(s, out var id) ? id : throw new UsageException($"--stop-ids: '{s}' is not a token id"));

        var ids = tokenizer.EncodeWithSpecialTokens(prompt);   // BOS first where the tokenizer puts one (Llama, Mistral)
        var generator = new TextGenerator(model);
        var options = new GenerationOptions { MaxNewTokens = maxTokens, Sampling = sampling, StopTokens = stops };
        output.Write(prompt);
        var decoder = tokenizer.CreateIncrementalDecoder();
        var clock = Stopwatch.StartNew();
        int produced = 0;
        foreach (var id in generator.Generate(ids, options))
        {
            output.Write(decoder.Push(id));
            output.Flush();
            produced++;
        }
        output.Write(decoder.Flush());
        output.WriteLine();
        Console.Error.WriteLine($"[{produced} tokens in {clock.Elapsed.TotalSeconds:F2} s, {produced / Math.Max(clock.Elapsed.TotalSeconds, 1e-9):F1} tok/s]");
        return 0;
    }

    /// <summary>Accepts a checkpoint, a checkpoints folder, a run directory or a model directory.</summary>
    internal static string ResolveModelDirectory(string dir)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--model {dir}: no such directory");
        if (File.Exists(Path.Combine(dir, "config.json"))) return dir;
        foreach (var store in new[] { dir, Path.Combine(dir, "checkpoints") })
            if (File.Exists(Path.Combine(store, "latest")))
                return new CheckpointStore(store).Latest()!;
        throw new FileNotFoundException($"--model {dir}: neither a model directory (config.json) nor a run with checkpoints");
    }

    internal static string TokenizerOf(string modelDir)
    {
        var state = Path.Combine(modelDir, "trainer_state.json");
        if (File.Exists(state)) return TrainingCheckpoint.ReadState(modelDir).Tokenizer;
        return modelDir;
    }
}
