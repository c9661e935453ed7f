using System.Globalization;
using System.Text.Json;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training.Checkpoints;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;

namespace Tessera.Training.Runs;

/// <summary>
/// What resuming a checkpoint with new settings would change, decided before anything is loaded. A resumed run continues
/// bit for bit only with the settings it was saved with, so:
/// <list type="bullet">
/// <item>a different model or dtype cannot be resumed at all (<see cref="Blockers"/>);</item>
/// <item>the global batch (rows per update over ranks and micro-batches), the sequence length and the learning-rate
/// schedule's shape (peak, warmup, floor) are <see cref="Changes"/> a run accepts only when told to;</item>
/// <item>a different total of steps re-plans the cosine schedule from the current step (<see cref="ScheduleReplan"/>
/// says how), which is how a finished run is extended; a total at or below the saved step leaves nothing to do.</item>
/// </list>
/// How the batch is split (per-rank rows, accumulation, world size) may change freely: the update is the same.
/// </summary>
public sealed class ResumeCheck
{
    private ResumeCheck(string checkpoint, TrainerState saved, int savedWorldSize, TrainerOptions requested, int requestedWorldSize,
        List<string> blockers, List<RunChange> changes, string? replan)
    {
        Checkpoint = checkpoint;
        Saved = saved;
        SavedWorldSize = savedWorldSize;
        Requested = requested;
        RequestedWorldSize = requestedWorldSize;
        Blockers = blockers;
        Changes = changes;
        ScheduleReplan = replan;
    }

    /// <summary>The checkpoint directory.</summary>
    public string Checkpoint { get; }

    /// <summary>Its trainer_state.json.</summary>
    public TrainerState Saved { get; }

    /// <summary>Data-parallel ranks that saved it (1 for a one-device checkpoint).</summary>
    public int SavedWorldSize { get; }

    /// <summary>The resumed run's options (per rank).</summary>
    public TrainerOptions Requested { get; }

    /// <summary>The resumed run's data-parallel ranks.</summary>
    public int RequestedWorldSize { get; }

    /// <summary>Differences that make a resume impossible (model, dtype, nothing left to train), in words.</summary>
    public IReadOnlyList<string> Blockers { get; }

    /// <summary>Settings that change the training trajectory; refused unless changes are allowed.</summary>
    public IReadOnlyList<RunChange> Changes { get; }

    /// <summary>How the learning-rate schedule is re-planned for a new total of steps, or null when the total is unchanged.</summary>
    public string? ScheduleReplan { get; }

    /// <summary>
    /// Compares checkpoint <paramref name="checkpoint"/> (its trainer_state.json and, for a sharded checkpoint, zero.json)
    /// with the run that would resume it: per-rank <paramref name="requested"/> options on <paramref name="worldSize"/>
    /// data-parallel ranks, a model of <paramref name="model"/> in <paramref name="dtype"/>. Reads only the small JSON files.
    /// </summary>
    public static ResumeCheck Compare(string checkpoint, TrainerOptions requested, int worldSize, TransformerConfig model, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(requested);
        ArgumentNullException.ThrowIfNull(model);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"world size ({worldSize}) must be at least 1");
        var saved = TrainingCheckpoint.ReadState(checkpoint);
        int savedWorld = SavedDataParallelSize(checkpoint);
        var o = saved.Options;

        var blockers = new List<string>();
        if (saved.Model != model)
        {
            var why = Tessera.Models.HuggingFace.HuggingFaceModelDirectory.ArchitectureMismatch(model, saved.Model);
            blockers.Add($"the model differs from the checkpoint's ({why ?? "configuration differs"})");
        }
        if (saved.DType != dtype.SafetensorsName())
            blockers.Add($"the checkpoint was trained in {saved.DType}, this run uses {dtype.SafetensorsName()}");
        if (requested.Steps <= saved.Step)
            blockers.Add(saved.Step == o.Steps && requested.Steps == o.Steps
                ? $"the run is complete at step {saved.Step} of {o.Steps}; the number of steps is a total: give more than {saved.Step} to train further"
                : $"the checkpoint is at step {saved.Step} and {requested.Steps} steps were asked in all: nothing is left to train; the number of steps is a total: give more than {saved.Step}");

        var changes = new List<RunChange>();
        long savedRows = (long)o.BatchSize * o.GradientAccumulationSteps * savedWorld;
        long requestedRows = (long)requested.BatchSize * requested.GradientAccumulationSteps * worldSize;
        if (savedRows != requestedRows)
            changes.Add(new RunChange("GlobalBatch", Rows(o.BatchSize, o.GradientAccumulationSteps, savedWorld),
                Rows(requested.BatchSize, requested.GradientAccumulationSteps, worldSize)));
        void Compare<T>(string name, T before, T after)
        {
            if (!EqualityComparer<T>.Default.Equals(before, after))
                changes.Add(new RunChange(name, Format(before), Format(after)));
        }
        Compare(nameof(TrainerOptions.SequenceLength), o.SequenceLength, requested.SequenceLength);
        Compare(nameof(TrainerOptions.LearningRate), o.LearningRate, requested.LearningRate);
        Compare(nameof(TrainerOptions.WarmupSteps), o.WarmupSteps, requested.WarmupSteps);
        Compare(nameof(TrainerOptions.MinLearningRateFraction), o.MinLearningRateFraction, requested.MinLearningRateFraction);

        string? replan = null;
        if (requested.Steps != o.Steps && requested.Steps > saved.Step)
        {
            var before = Schedule(o);
            var after = Schedule(requested);
            int s = saved.Step;
            replan = string.Create(CultureInfo.InvariantCulture,
                $"the learning-rate schedule is re-planned from {o.Steps} to {requested.Steps} steps in all: at step {s} the rate goes from {Rate(before.At(s))} (the saved plan) to {Rate(after.At(s))}, " +
                $"then follows the new plan (warm-up, then cosine decay) to {Rate(after.At(requested.Steps - 1))} at step {requested.Steps}; the remaining {requested.Steps - s} steps do not repeat a run planned for {requested.Steps} from the start");
        }
        return new ResumeCheck(checkpoint, saved, savedWorld, requested, worldSize, blockers, changes, replan);
    }

    /// <summary>
    /// Throws <see cref="ResumeMismatchException"/> when a blocker exists, or when there are changes and
    /// <paramref name="allowChanges"/> is false; the message lists them all, named by <paramref name="nameOf"/>
    /// (e.g. the command-line option of each setting).
    /// </summary>
    public void ThrowIfRefused(bool allowChanges, Func<string, string>? nameOf = null)
    {
        nameOf ??= s => s;
        if (Blockers.Count > 0)
            throw new ResumeMismatchException($"{Checkpoint}: cannot resume: {string.Join("; ", Blockers)}");
        if (Changes.Count > 0 && !allowChanges)
            throw new ResumeMismatchException(
                $"{Checkpoint}: resuming would change {Describe(nameOf)}; the run would no longer continue the one that was saved. " +
                "Resume with the saved settings (leave these options out), or allow the change explicitly");
    }

    /// <summary>The changes as "name saved -> requested, ...", named by <paramref name="nameOf"/>.</summary>
    public string Describe(Func<string, string>? nameOf = null)
    {
        nameOf ??= s => s;
        return string.Join(", ", Changes.Select(c => $"{nameOf(c.Setting)} {c.Saved} -> {c.Requested}"));
    }

    private static string Rate(double lr) => lr.ToString("0.00e+0", CultureInfo.InvariantCulture);

    private static CosineSchedule Schedule(TrainerOptions o) =>
        new(o.LearningRate, o.LearningRate * o.MinLearningRateFraction, o.WarmupSteps, o.Steps);

    private static string Rows(int batch, int accumulation, int world) =>
        world == 1 && accumulation == 1 ? $"{batch} rows"
            : $"{(long)batch * accumulation * world} rows ({(world > 1 ? $"{world} ranks x " : "")}{batch}{(accumulation > 1 ? $" x {accumulation} micro-batches" : "")})";

    private static string Format<T>(T value) => value switch
    {
        double d => d.ToString("G6", CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value?.ToString() ?? "null",
    };

    /// <summary>
    /// Data-parallel ranks that saved <paramref name="checkpoint"/> (the batch is split over them; tensor-parallel ranks
    /// share theirs): parallel.json's "dp", a legacy zero.json's "world_size", a LoRA checkpoint's "lora.data_parallel", or 1
    /// for a one-device checkpoint.
    /// </summary>
    public static int SavedDataParallelSize(string checkpoint)
    {
        if (File.Exists(Path.Combine(checkpoint, LoraCheckpoint.StateFile)) && TrainingCheckpoint.ReadState(checkpoint).Lora is { } lora) return lora.DataParallel;
        foreach (var (file, field) in new[] { (ShardedCheckpoint.LayoutFile, "dp"), (ShardedCheckpoint.LegacyLayoutFile, "world_size") })
        {
            var path = Path.Combine(checkpoint, file);
            if (!File.Exists(path)) continue;
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(path));
                return doc.RootElement.GetProperty(field).GetInt32();
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
            {
                throw new CheckpointException($"{path}: no integer \"{field}\" ({e.Message})", e);
            }
        }
        return 1;
    }
}
