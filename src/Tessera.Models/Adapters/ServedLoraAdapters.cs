using Tessera.Nn.Adapters;

namespace Tessera.Models.Adapters;

/// <summary>
/// PEFT LoRA adapters to serve unmerged over one base model (multi-LoRA): each read and checked against the base's configuration
/// by <see cref="LoraWeightMerge.Open"/> (the reader and the checks of <c>--adapter</c> and <c>tessera export</c>: files, target
/// modules, every tensor's name and shape), and the <see cref="MultiLoraBatch"/> to build the model with (the union of their
/// targets, or every target when adapters may be loaded at run time) with its slots (<see cref="LoraSlotOptions"/>), into whose
/// <see cref="MultiLoraLinear"/> layers <see cref="AttachTo"/> copies them once the model is built; <see cref="Attach"/> and
/// <see cref="MultiLoraBatch.Detach"/> fill and empty a slot later.
/// </summary>
public sealed class ServedLoraAdapters
{
    private ServedLoraAdapters(IReadOnlyList<LoraModule> modules, IReadOnlyList<LoraWeightMerge> adapters, MultiLoraBatch batch)
    {
        Modules = modules;
        Adapters = adapters;
        Batch = batch;
    }

    /// <summary>The adapters' names and directories, in index order.</summary>
    public IReadOnlyList<LoraModule> Modules { get; }

    /// <summary>The adapters as read (F32 on the CPU), in index order.</summary>
    public IReadOnlyList<LoraWeightMerge> Adapters { get; }

    /// <summary>The batch to build the served model with (<see cref="Transformer"/>'s servedAdapters).</summary>
    public MultiLoraBatch Batch { get; }

    /// <summary>
    /// Reads and checks the adapters of <paramref name="modules"/> for a model of <paramref name="config"/> (names distinct); throws
    /// as <see cref="LoraWeightMerge.Open"/> does, naming the adapter's directory, for one that does not fit. The batch has the slots
    /// of <paramref name="slots"/> (defaults there); the start-up adapters occupy the first. Its targets are the union of the
    /// start-up adapters' or, with <see cref="LoraSlotOptions.RuntimeLoading"/>, every target of the family.
    /// </summary>
    /// <exception cref="ArgumentException">The slots cannot hold the start-up adapters (names the option).</exception>
    public static ServedLoraAdapters Open(IReadOnlyList<LoraModule> modules, TransformerConfig config, LoraSlotOptions? slots = null)
    {
        ArgumentNullException.ThrowIfNull(modules);
        ArgumentNullException.ThrowIfNull(config);
        slots ??= new LoraSlotOptions();
        if (modules.Count == 0 && !slots.RuntimeLoading) throw new ArgumentException("multi-LoRA: no adapter given", nameof(modules));
        var adapters = modules.Select(m => LoraWeightMerge.Open(m.Directory, config)).ToList();
        int largest = adapters.Count == 0 ? 0 : adapters.Max(RankOf);
        int count = slots.MaxLoras ?? (slots.RuntimeLoading ? Math.Max(modules.Count, 1) : modules.Count);
        int maxRank = slots.MaxLoraRank ?? (slots.RuntimeLoading ? Math.Max(largest, LoraSlotOptions.DefaultMaxRank) : largest);
        if (count < Math.Max(modules.Count, 1))
            throw new ArgumentException($"max-loras ({count}) must be at least 1 and hold the {modules.Count} adapters given at start-up");
        if (maxRank < Math.Max(largest, 1))
            throw new ArgumentException($"max-lora-rank ({maxRank}) must be at least 1 and hold the largest start-up adapter's rank ({largest}: " +
                string.Join(", ", modules.Select((m, i) => $"{m.Name} r = {RankOf(adapters[i])}")) + ")");
        // A mixture of experts' runtime-loading slots cover its attention (q, k, v, o) beside the start-up adapters' targets
        // (experts, shared expert and router among them, served unmerged: each expert's rows follow its gather), not every expert.
        var startup = adapters.SelectMany(a => a.Options.Targets);
        var targets = slots.RuntimeLoading
            ? (config.IsMixtureOfExperts ? LoraTargets.Parse(config, LoraTargets.Default).Concat(startup) : LoraTargets.Parse(config, LoraTargets.Of(config).Select(r => r.Short))).Distinct().ToList()
            : startup.Distinct().ToList();
        return new ServedLoraAdapters(modules, adapters, new MultiLoraBatch(modules.Select(m => m.Name).ToList(), targets, count, maxRank));
    }

    /// <summary>The largest rank of an adapter's layers.</summary>
    public static int RankOf(LoraWeightMerge adapter) => adapter.Adapters.Layers.Count == 0 ? adapter.Options.Rank : adapter.Adapters.Layers.Max(l => l.Rank);

    /// <summary>
    /// Allocates the slots in the layers of <paramref name="model"/> (built with <see cref="Batch"/>) on its backend in its dtype
    /// and copies every start-up adapter's A and B into its slot.
    /// </summary>
    public void AttachTo(Transformer model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!ReferenceEquals(model.ServedAdapters, Batch)) throw new ArgumentException("multi-LoRA: the model was not built with these adapters' batch", nameof(model));
        Batch.Allocate(model.Backend, model.DType);
        for (int i = 0; i < Adapters.Count; i++) Attach(Batch, i, Modules[i].Name, Adapters[i]);
    }

    /// <summary>
    /// Checks that <paramref name="adapter"/> fits the slots of <paramref name="batch"/>: its targets among the served ones and its
    /// rank at most the slots'. Throws <see cref="InvalidDataException"/> saying what does not fit.
    /// </summary>
    public static void CheckFits(MultiLoraBatch batch, LoraWeightMerge adapter)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(adapter);
        var other = adapter.Options.Targets.Where(t => !batch.Targets.Contains(t)).Select(t => t.Name).ToList();
        if (other.Count > 0)
            throw new InvalidDataException($"{adapter.Directory}: targets {string.Join(", ", other)}, which the server does not serve " +
                $"(served targets, fixed at start-up: {string.Join(", ", batch.Targets.Select(t => t.Name))})");
        int rank = RankOf(adapter);
        if (rank > batch.MaxRank)
            throw new InvalidDataException($"{adapter.Directory}: rank {rank} exceeds the slots' rank {batch.MaxRank} (serve --max-lora-rank {rank} or more)");
    }

    /// <summary>
    /// Writes <paramref name="adapter"/> (served as <paramref name="name"/>, for messages) into slot <paramref name="slot"/> of every
    /// layer of <paramref name="batch"/> (allocated), after <see cref="CheckFits"/>; call it between steps.
    /// </summary>
    public static void Attach(MultiLoraBatch batch, int slot, string name, LoraWeightMerge adapter)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(adapter);
        CheckFits(batch, adapter);
        var adapters = adapter.Adapters;
        foreach (var layer in adapters.Layers)
        {
            var served = batch.Layer(layer.Name)
                ?? throw new InvalidOperationException($"multi-LoRA: adapter '{name}' adapts {layer.Name}, which the served model built plain");
            foreach (var part in layer.Parts)
                served.Attach(slot, part.Target.Part, layer.Rank, layer.Scaling, adapters.Read(part.A), adapters.Read(part.B));
        }
    }
}
