using Tessera.Distributed;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;

namespace Tessera.Tests.Training.Parallel;

/// <summary>How the tests build trainers and reach their strategies.</summary>
internal static class TrainerStrategies
{
    /// <summary>A trainer of rank <paramref name="group"/>.Rank under the data-parallel strategy of <paramref name="parallel"/>.</summary>
    public static Trainer DataParallel(Transformer model, ProcessGroup group, TokenDataLoader train, TrainerOptions options, AdamWOptions adamW,
        DataParallelOptions parallel, IBackend? host = null) =>
        new(model, DataParallelism.Create(model, group, parallel, adamW, host), train, null, options);

    /// <summary>The trainer's data-parallel strategy.</summary>
    public static DataParallelism Strategy(this Trainer trainer) => (DataParallelism)trainer.Parallelism;

    /// <summary>The trainer's ZeRO-3 strategy.</summary>
    public static FullyShardedDataParallel FullySharded(this Trainer trainer) => (FullyShardedDataParallel)trainer.Parallelism;

    /// <summary>A one-device trainer's optimizer.</summary>
    public static AdamWOptimizer AdamW(this Trainer trainer) => ((SingleDevice)trainer.Parallelism).Optimizer;
}
