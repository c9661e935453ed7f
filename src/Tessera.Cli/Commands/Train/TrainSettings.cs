using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Optim;
using Tessera.Training.Pipeline;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// Everything <c>tessera train</c> was asked, built at the edge from the command line. Settings that shape the run's
/// trajectory are null when not given: a fresh run takes the defaults, a resumed run the checkpoint's values
/// (<see cref="Resolve"/>), so <c>train --out DIR --resume</c> continues exactly what was saved.
/// </summary>
public sealed record TrainSettings
{
    /// <summary>Preset name or Hugging Face directory to fine-tune; null: gpt2-tiny, or the checkpoint's model on resume.</summary>
    public string? Model { get; init; }

    /// <summary>Training shards (a path or a glob in the file name); null: the embedded corpus.</summary>
    public string? Data { get; init; }

    /// <summary>Validation shards; null: none (the embedded corpus brings its own).</summary>
    public string? ValidationData { get; init; }

    /// <summary>Tokenizer of the shards; null: byte, or the checkpoint's on resume.</summary>
    public string? Tokenizer { get; init; }

    /// <summary>The run directory.</summary>
    public required string Out { get; init; }

    /// <summary>Total optimizer updates; null: 1200 (or the checkpoint's total).</summary>
    public int? Steps { get; init; }

    /// <summary>Rows per update per rank; null: 16 (or the checkpoint's).</summary>
    public int? Batch { get; init; }

    /// <summary>Rows per micro-batch; null: the batch (or the checkpoint's micro-batch; with --pp, a 2 x pp-th of the batch when it divides).</summary>
    public int? Micro { get; init; }

    /// <summary>Tokens per row; null: 128 (or the checkpoint's).</summary>
    public int? Sequence { get; init; }

    /// <summary>Peak learning rate; null: 2e-3 (or the checkpoint's).</summary>
    public double? LearningRate { get; init; }

    /// <summary>Warmup steps; null: 50 (or the checkpoint's).</summary>
    public int? Warmup { get; init; }

    /// <summary>Floor of the cosine as a fraction of the peak; null: 0.1 (or the checkpoint's).</summary>
    public double? MinLearningRateFraction { get; init; }

    /// <summary>Initialization seed; null: 1337 (or the checkpoint's).</summary>
    public int? Seed { get; init; }

    /// <summary>AdamW settings.</summary>
    public required AdamWOptions AdamW { get; init; }

    /// <summary>Validate every N steps (0: never); null: 200 (or the checkpoint's).</summary>
    public int? EvalEvery { get; init; }

    /// <summary>Validation batches per evaluation; null: 4 (or the checkpoint's).</summary>
    public int? EvalBatches { get; init; }

    /// <summary>Checkpoint every N steps (0: only at the end and on a stop); null: 200 (or the checkpoint's).</summary>
    public int? CheckpointEvery { get; init; }

    /// <summary>Checkpoints kept (older ones are deleted after each save).</summary>
    public int KeepLast { get; init; } = 3;

    /// <summary>Log (print and metrics.jsonl) every N steps; null: 50 (or the checkpoint's).</summary>
    public int? LogEvery { get; init; }

    /// <summary>Compute device.</summary>
    public Device Device { get; init; } = Device.Cpu;

    /// <summary>CPU threads.</summary>
    public int Threads { get; init; } = Environment.ProcessorCount;

    /// <summary>Model dtype; null: f32 (or the checkpoint's).</summary>
    public DType? DType { get; init; }

    /// <summary>How a BF16 model keeps its F32 masters (--masters); default <see cref="MasterWeights.Separate"/>; split: one GPU or launched data-parallel ranks (ZeRO 0-3), not offloaded.</summary>
    public MasterWeights Masters { get; init; } = MasterWeights.Separate;

    /// <summary>Recompute activations in backward.</summary>
    public bool Recompute { get; init; }

    /// <summary>CPU thread ranks.</summary>
    public int Ranks { get; init; } = 1;

    /// <summary>Tensor-parallel ranks (Megatron): the ranks form a dp x tp mesh, tp innermost; 1: data parallelism only.</summary>
    public int TensorParallel { get; init; } = 1;

    /// <summary>Expert-parallel ranks (--ep; a mixture-of-experts model on CPU thread ranks): each group of this many data-parallel
    /// ranks splits every layer's experts between them; 1 (default): every rank holds every expert.</summary>
    public int ExpertParallel { get; init; } = 1;

    /// <summary>With <see cref="TensorParallel"/> &gt; 1: sequence parallelism (norms on sequence slices).</summary>
    public bool SequenceParallel { get; init; }

    /// <summary>ZeRO stage with ranks.</summary>
    public int Zero { get; init; }

    /// <summary>Optimizer state on the host.</summary>
    public bool Offload { get; init; }

    /// <summary>Pipeline stages (1: none).</summary>
    public int Pp { get; init; } = 1;

    /// <summary>The pipeline schedule.</summary>
    public PipelineScheduleKind Schedule { get; init; } = PipelineScheduleKind.OneForwardOneBackward;

    /// <summary>Model chunks per pipeline stage; null: 2 for the interleaved schedule, else 1.</summary>
    public int? VirtualStages { get; init; }

    /// <summary>Print the pipeline schedule's timeline and exit.</summary>
    public bool PrintSchedule { get; init; }

    /// <summary>Print the activation-memory estimate per rank and micro-batch and exit.</summary>
    public bool PrintMemory { get; init; }

    /// <summary>Model chunks per stage: the given count, or 2 for the interleaved schedule, else 1.</summary>
    public int Chunks => VirtualStages ?? (Schedule == PipelineScheduleKind.Interleaved ? 2 : 1);

    /// <summary>Continue from OUT/checkpoints/latest.</summary>
    public bool Resume { get; init; }

    /// <summary>Accept a resume that changes the trajectory (batch, sequence, schedule).</summary>
    public bool AllowChanges { get; init; }

    /// <summary>Tokens to sample at the end.</summary>
    public int SampleTokens { get; init; } = 200;

    /// <summary>LoRA rank (--lora): fine-tune adapters on a frozen Hugging Face model with chat data; null: full training.</summary>
    public int? LoraRank { get; init; }

    /// <summary>LoRA alpha (--lora-alpha); null: the rank (a scaling of 1).</summary>
    public double? LoraAlpha { get; init; }

    /// <summary>LoRA dropout (--lora-dropout).</summary>
    public double LoraDropout { get; init; }

    /// <summary>LoRA targets (--lora-targets): short names (q, k, v, o, gate, up, down; GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj) or PEFT module names; null: the family's attention projections.</summary>
    public IReadOnlyList<string>? LoraTargets { get; init; }

    /// <summary>A PEFT adapter directory to start the adapters from (--adapter), or null (PEFT's initialization).</summary>
    public string? Adapter { get; init; }

    /// <summary>
    /// With --lora, how the frozen base keeps its weight matrices (--quantize): int8 or fp8 holds them a byte a weight, int4 in 4-bit groups (gradients
    /// reach the adapters through dequantized copies, a layer at a time). Saved with the run: a resume holds the base as it was held.
    /// </summary>
    public Tessera.Nn.Quantization.WeightQuantization Quantize { get; init; }

    /// <summary>
    /// The run's trainer options and the remaining choices: given values first, then the checkpoint's (<paramref name="saved"/>,
    /// with the ranks that saved it; <paramref name="worldSize"/> ranks resume it), then the defaults. Throws <see cref="CommandLine.UsageException"/> naming the option when
    /// the micro-batch does not divide the batch.
    /// </summary>
    public (TrainerOptions Options, DType DType, string Tokenizer, int Seed) Resolve(TrainerState? saved, int savedWorldSize, int worldSize)
    {
        var o = saved?.Options;
        int batch = Batch ?? (o is null ? 16 : SavedBatchPerRank(o, savedWorldSize));
        int micro = Micro ?? (Batch is null && o is not null && batch % o.BatchSize == 0 ? o.BatchSize : PipelineMicro(batch));
        if (batch % micro != 0)
            throw new CommandLine.UsageException($"--micro ({micro}) must divide --batch ({batch}): each update sums the gradients of --batch / --micro micro-batches");
        int seed = Seed ?? o?.Seed ?? 1337;
        var options = new TrainerOptions
        {
            Steps = Steps ?? o?.Steps ?? 1200,
            BatchSize = micro,
            GradientAccumulationSteps = batch / micro,
            SequenceLength = Sequence ?? o?.SequenceLength ?? 128,
            LearningRate = LearningRate ?? o?.LearningRate ?? 2e-3,
            WarmupSteps = Warmup ?? o?.WarmupSteps ?? 50,
            MinLearningRateFraction = MinLearningRateFraction ?? o?.MinLearningRateFraction ?? 0.1,
            Seed = seed,
            EvalEvery = EvalEvery ?? o?.EvalEvery ?? 200,
            EvalBatches = EvalBatches ?? o?.EvalBatches ?? 4,
            CheckpointEvery = CheckpointEvery ?? o?.CheckpointEvery ?? 200,
            LogEvery = LogEvery ?? o?.LogEvery ?? 50,
        };
        var dtype = DType ?? (saved is null ? Tensors.DType.F32 : Tensors.DTypeInfo.FromSafetensorsName(saved.DType) ?? Tensors.DType.F32);
        return (options, dtype, Tokenizer ?? saved?.Tokenizer ?? "byte", seed);

        // A pipeline needs several micro-batches per step to fill: 2 x pp of them when the batch splits so, else pp, else one.
        int PipelineMicro(int rows) => Pp <= 1 ? rows : rows % (2 * Pp) == 0 ? rows / (2 * Pp) : rows % Pp == 0 ? rows / Pp : rows;

        int SavedBatchPerRank(TrainerOptions s, int world)
        {
            long rows = (long)s.BatchSize * s.GradientAccumulationSteps * world;
            if (rows % worldSize != 0)
                throw new CommandLine.UsageException($"the checkpoint's global batch of {rows} rows does not split over {worldSize} ranks; give --batch explicitly");
            return (int)(rows / worldSize);
        }
    }
}
