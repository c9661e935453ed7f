using System.Diagnostics;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Cuda;
using Tessera.Cuda.Distributed;
using Tessera.Distributed.Launch;
using Tessera.Distributed.Nccl;
using Tessera.Tensors.Cpu;

namespace Tessera.Cli.Commands;

/// <summary>tessera train: trains a model from token shards, or the embedded default.</summary>
internal static class TrainCommand
{
    public const string Usage = """
        tessera train [options]
          With no --data: trains the gpt2-tiny preset on the .NET SDK's XML API documentation (byte tokens).
          --model NAME|HF_DIR     preset (gpt2-tiny, gpt2-124m, llama-debug, ...) or a Hugging Face directory to fine-tune  [gpt2-tiny]
          --data GLOB             training shards (llm.c format), e.g. data/train_*.bin
          --val-data GLOB         validation shards
          --tokenizer byte|DIR    tokenizer of the shards (for the sample at the end)  [byte]
          --out DIR               run directory: data/, checkpoints/, metrics.jsonl  [runs/default]
          --steps N [1200]  --batch B [16]  --seq T [128]  --accum N [1]  --lr X [2e-3]  --warmup N [50]
          --min-lr-fraction X [0.1]  --weight-decay X [0.1]  --clip X [1.0]  --seed N [1337]
          --eval-every N [200]  --eval-batches N [4]  --checkpoint-every N [0: at the end]  --log-every N [50]
          --device cpu|cuda[:N] [cpu]  --threads N [all cores]  --dtype f32|bf16|f64 [f32]  --recompute
          --ranks N               data-parallel CPU ranks (threads of this process; cores are split between them) [1]
          --zero 0|1|2|3          with --ranks: ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters sharded) [0]
          --offload               with --zero: optimizer state and update on the host (ZeRO-Offload)
          Under 'tessera launch' (or srun / mpirun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) with --device cuda,
          each process trains on GPU LOCAL_RANK, data parallel through NCCL (--zero and --offload apply there too).
          --resume                continue from OUT/checkpoints/latest
          --sample-tokens N       tokens to sample from the final model [200]
        """;

    public static int Run(CommandLineArguments args, TextWriter output)
    {
        string modelSpec = args.String("model", "gpt2-tiny")!;
        string? dataGlob = args.String("data");
        string? valGlob = args.String("val-data");
        string tokenizerSpec = args.String("tokenizer", "byte")!;
        string outDir = args.String("out", "runs/default")!;
        var options = new TrainerOptions
        {
            Steps = args.Int("steps", 1200),
            BatchSize = args.Int("batch", 16),
            SequenceLength = args.Int("seq", 128),
            GradientAccumulationSteps = args.Int("accum", 1),
            LearningRate = args.Double("lr", 2e-3),
            WarmupSteps = args.Int("warmup", 50),
            MinLearningRateFraction = args.Double("min-lr-fraction", 0.1),
            Seed = args.Int("seed", 1337),
            EvalEvery = args.Int("eval-every", 200),
            EvalBatches = args.Int("eval-batches", 4),
            CheckpointEvery = args.Int("checkpoint-every", 0),
            LogEvery = args.Int("log-every", 50),
        };
        var adam = new AdamWOptions { WeightDecay = args.Double("weight-decay", 0.1), MaxGradNorm = args.Double("clip", 1.0) };
        string device = args.String("device", "cpu")!;
        int threads = args.Int("threads", Environment.ProcessorCount);
        var dtype = args.String("dtype", "f32") switch
        {
            "f32" => DType.F32,
            "f64" => DType.F64,
            "bf16" => DType.BF16,
            var other => throw new UsageException($"--dtype {other}: expected f32, bf16 or f64"),
        };
        bool recompute = args.Flag("recompute");
        bool resume = args.Flag("resume");
        int sampleTokens = args.Int("sample-tokens", 200);
        int ranks = args.Int("ranks", 1);
        int zero = args.Int("zero", 0);
        bool offload = args.Flag("offload");
        args.ThrowOnUnknown("train");
        if (ranks < 1) throw new UsageException($"--ranks ({ranks}) must be at least 1");
        if (zero is < 0 or > 3) throw new UsageException($"--zero ({zero}) must be 0, 1, 2 or 3");
        // Started by a launcher (tessera launch, srun, mpirun): one process per GPU, NCCL between them.
        var env = DistributedEnvironment.FromEnvironment();
        bool launched = env.IsDistributed || Environment.GetEnvironmentVariable("WORLD_SIZE") is not null;
        bool onGpu = device.StartsWith("cuda", StringComparison.Ordinal);
        if (launched && onGpu)
        {
            if (ranks > 1) throw new UsageException("--ranks (CPU thread ranks) cannot be combined with a launched multi-process run");
            device = $"cuda:{env.LocalRank}";
        }
        else if (env.IsDistributed)
            throw new UsageException($"this process is rank {env.Rank} of {env.WorldSize} ({env.Source}), but multi-process training runs on GPUs through NCCL: add --device cuda, or use --ranks N for CPU thread ranks in one process");
        bool ncclRun = launched && onGpu;
        if ((zero > 0 || offload) && ranks == 1 && !ncclRun) throw new UsageException("--zero and --offload need --ranks of 2 or more, or a launched multi-GPU run");
        if (dtype == DType.BF16 && !onGpu)
            throw new UsageException("--dtype bf16 (mixed precision) needs --device cuda: the CPU backend computes in f32 or f64");
        if (ranks > 1 && !device.StartsWith("cpu", StringComparison.Ordinal))
            throw new UsageException("--ranks runs CPU thread ranks; for GPUs start one process per GPU with 'tessera launch'");
        options.Validate();

        // The device first: a missing GPU or driver fails before anything is written.
        var backend = BackendFactory.Create(device, threads);

        // Data: given shards, or the embedded corpus written once into OUT/data.
        List<string> trainShards, valShards;
        if (dataGlob is null)
        {
            if (tokenizerSpec != "byte") throw new UsageException("the embedded corpus uses byte tokens; give --data for another tokenizer");
            (trainShards, valShards) = PrepareEmbeddedCorpus(Path.Combine(outDir, "data"), output);
        }
        else
        {
            trainShards = ShardWriter.Expand(dataGlob);
            valShards = valGlob is null ? [] : ShardWriter.Expand(valGlob);
        }
        // Open (and validate) the data before anything is built or written.
        var train = new TokenDataLoader(trainShards, options.BatchSize, options.SequenceLength);
        var validation = valShards.Count > 0 ? new TokenDataLoader(valShards, options.BatchSize, options.SequenceLength) : null;
        var tokenizer = TokenizerFactory.Create(tokenizerSpec);

        // Model. ZeRO-3 builds it sharded (declared only; each rank's trainer writes its shards of the weights), so no
        // process allocates the full-size parameters.
        Transformer model;
        string? initDir = Directory.Exists(modelSpec) ? modelSpec : null;
        bool shardedConstruction = zero == 3 && (ranks > 1 || ncclRun);
        var storage = shardedConstruction ? ArenaStorage.Deferred : ArenaStorage.Full;
        if (initDir is not null)
        {
            if (shardedConstruction)
            {
                using var hf = Tessera.Models.HuggingFace.HuggingFaceModelDirectory.Open(initDir);
                model = new Transformer(hf.Config, backend, dtype, storage);
            }
            else model = PretrainedModel.Load(initDir, backend, dtype);
            output.WriteLine($"fine-tuning {initDir}");
        }
        else
        {
            var config = ModelPresets.Get(modelSpec);
            if (tokenizer.VocabSize > config.VocabSize)
                throw new UsageException($"tokenizer has {tokenizer.VocabSize} tokens but model {modelSpec} only {config.VocabSize}");
            model = new Transformer(config, backend, dtype, storage);
            if (!shardedConstruction) model.InitializeWeights(options.Seed);
        }
        // Under sharded construction the trainer writes the weights into the rank's shards.
        void WriteWeights(Trainer t)
        {
            if (!shardedConstruction) return;
            if (initDir is not null) t.LoadWeights(initDir);
            else t.InitializeWeights(options.Seed);
        }
        model.RecomputeActivations = recompute;
        var cfg = model.Config;
        output.WriteLine($"model {modelSpec}: {cfg.Family}, {cfg.Layers} layers, {cfg.Embedding} wide, {cfg.Heads} heads, {model.Layout.ParameterCount:N0} parameters, {dtype} on {backend.Device}");

        output.WriteLine($"data: {train.TotalTokens:N0} training tokens in {trainShards.Count} shard(s); {(validation is null ? "no validation" : $"{validation.TotalTokens:N0} validation tokens")}");
        var store = new CheckpointStore(Path.Combine(outDir, "checkpoints"));
        string? resumeFrom = resume ? store.Latest() ?? throw new CheckpointException($"--resume: no checkpoint in {store.Root}") : null;
        if (ranks > 1)
        {
            var parallel = new DataParallelOptions { Stage = (ZeroStage)zero, OffloadOptimizer = offload }.Validate();
            output.WriteLine($"data parallel: {ranks} thread ranks, ZeRO stage {zero}{(offload ? " with optimizer offload" : "")}, global batch {ranks} x {options.BatchSize} x {options.SequenceLength}");
            var config = model.Config;
            var parallelProgress = new ConsoleProgress(output, 0);
            using var parallelMetrics = new MetricsLog(Path.Combine(outDir, "metrics.jsonl"));
            int done = ParallelTraining.Train(ranks, parallel, options, adam,
                ctx =>
                {
                    var m = new Transformer(config, ctx.Backend, dtype, storage);
                    if (shardedConstruction) { /* written by the trainer: WriteWeights */ }
                    else if (initDir is not null)
                    {
                        using var hf = Tessera.Models.HuggingFace.HuggingFaceModelDirectory.Open(initDir, config);
                        hf.LoadInto(m.Parameters.Parameters, ctx.Backend);
                    }
                    else m.InitializeWeights(options.Seed);
                    m.RecomputeActivations = recompute;
                    return (m, new TokenDataLoader(trainShards, options.BatchSize, options.SequenceLength, ctx.Rank, ranks));
                },
                onStep: metricsStep => { parallelProgress.Report(metricsStep); parallelMetrics.Append(metricsStep); },
                checkpoint: t =>
                {
                    var dir = ShardedCheckpoint.Save(store, t, tokenizerSpec);
                    if (t.Reports) output.WriteLine($"checkpoint {dir}");
                },
                resume: resumeFrom is null ? null : t => ShardedCheckpoint.Restore(resumeFrom, t),
                weights: WriteWeights);
            output.WriteLine($"done: {done} steps");
            if (sampleTokens > 0 && store.Latest() is string last)
                Sample(PretrainedModel.Load(last, backend, dtype, config), tokenizer, sampleTokens, options.Seed, output);
            return 0;
        }

        if (ncclRun)
        {
            var timeout = TimeSpan.FromMinutes(5);
            using var access = new CudaCommunication((CudaBackend)backend);
            var uniqueId = TcpRendezvous.Exchange(env, NcclProcessGroup.CreateUniqueId, timeout);
            using var group = NcclProcessGroup.Create("world", env.Rank, env.WorldSize, uniqueId, access, timeout);
            var parallel = new DataParallelOptions { Stage = (ZeroStage)zero, OffloadOptimizer = offload }.Validate();
            var loader = new TokenDataLoader(trainShards, options.BatchSize, options.SequenceLength, env.Rank, env.WorldSize);
            var dp = new Trainer(model, DataParallelism.Create(model, group, parallel, adam, offload ? new CpuBackend(threads) : null), loader, null, options);
            if (resumeFrom is null) WriteWeights(dp);
            bool rank0 = env.Rank == 0;
            if (rank0) output.WriteLine($"data parallel over NCCL: {env.WorldSize} process(es), ZeRO stage {zero}{(offload ? " with optimizer offload" : "")}, global batch {env.WorldSize} x {options.BatchSize} x {options.SequenceLength}");
            if (resumeFrom is not null)
            {
                ShardedCheckpoint.Restore(resumeFrom, dp);
                if (rank0) output.WriteLine($"resumed from {resumeFrom} at step {dp.Step}");
            }
            var ncclProgress = new ConsoleProgress(output, dp.Step);
            using var ncclMetrics = rank0 ? new MetricsLog(Path.Combine(outDir, "metrics.jsonl")) : null;
            dp.Run(rank0 ? ncclProgress.Report : null, t =>
            {
                var dir = ShardedCheckpoint.Save(store, t, tokenizerSpec);
                if (rank0) output.WriteLine($"checkpoint {dir}");
            }, ncclMetrics);
            if (rank0 && sampleTokens > 0 && store.Latest() is string last)
                Sample(PretrainedModel.Load(last, backend, dtype, model.Config), tokenizer, sampleTokens, options.Seed, output);
            return 0;
        }

        var optimizer = new AdamWOptimizer(model.Parameters, adam);
        var trainer = new Trainer(model, optimizer, train, validation, options);
        if (resumeFrom is not null)
        {
            if (ShardedCheckpoint.IsSharded(resumeFrom)) ShardedCheckpoint.Restore(resumeFrom, trainer);
            else TrainingCheckpoint.Restore(resumeFrom, model, trainer);
            output.WriteLine($"resumed from {resumeFrom} at step {trainer.Step}");
        }

        output.WriteLine($"training {options.Steps} steps of {options.BatchSize} x {options.SequenceLength} tokens (x{options.GradientAccumulationSteps} accumulation)");
        var progress = new ConsoleProgress(output, trainer.Step);
        using var metrics = new MetricsLog(Path.Combine(outDir, "metrics.jsonl"));
        var clock = Stopwatch.StartNew();
        string? saved = null;
        trainer.Run(progress.Report, t =>
        {
            saved = TrainingCheckpoint.Save(store, model, t, tokenizerSpec);
            output.WriteLine($"checkpoint {saved}");
        }, metrics);
        output.WriteLine($"done in {ConsoleProgress.FormatDuration(clock.Elapsed.TotalSeconds)}");

        if (sampleTokens > 0) Sample(model, tokenizer, sampleTokens, options.Seed, output);
        return 0;
    }

    private static void Sample(Transformer model, ITokenizer tokenizer, int tokens, int seed, TextWriter output)
    {
        var prompt = tokenizer.Encode("The ");
        var generator = new TextGenerator(model);
        var gen = new GenerationOptions
        {
            MaxNewTokens = tokens,
            Sampling = new SamplingOptions { Temperature = 0.8, TopK = 40, Seed = (ulong)seed },
        };
        output.WriteLine("sample:");
        output.Write("The ");
        var decoder = tokenizer.CreateIncrementalDecoder();
        foreach (var id in generator.Generate(prompt, gen)) output.Write(decoder.Push(id));
        output.Write(decoder.Flush());
        output.WriteLine();
    }

    private static (List<string> Train, List<string> Val) PrepareEmbeddedCorpus(string dataDir, TextWriter output)
    {
        var trainPath = Path.Combine(dataDir, "train_000.bin");
        var valPath = Path.Combine(dataDir, "val_000.bin");
        if (!File.Exists(trainPath) || !File.Exists(valPath))
        {
            var text = EmbeddedCorpus.Load(4_000_000, out var source);
            var bytes = System.Text.Encoding.UTF8.GetBytes(text);
            var tokens = Array.ConvertAll(bytes, b => (int)b);
            ShardWriter.WriteSplit(tokens, dataDir, 0.05, int.MaxValue);
            output.WriteLine($"corpus: {source}, {bytes.Length:N0} bytes -> {dataDir}");
        }
        var trainTokens = TokenShard.ReadTokens(trainPath);
        output.WriteLine($"corpus unigram entropy: {UnigramEntropy(trainTokens):F3} nats/token (a model that learns nothing beyond byte frequencies stays near this)");
        return ([trainPath], [valPath]);
    }

    /// <summary>Entropy of the token frequency distribution, in nats.</summary>
    internal static double UnigramEntropy(ReadOnlySpan<ushort> tokens)
    {
        var counts = new long[65536];
        foreach (var t in tokens) counts[t]++;
        double h = 0;
        foreach (var c in counts)
            if (c > 0) { double p = (double)c / tokens.Length; h -= p * Math.Log(p); }
        return h;
    }
}
