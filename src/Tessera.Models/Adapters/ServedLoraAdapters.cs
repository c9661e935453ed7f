using Tessera.Nn.Adapters;

namespace Tessera.Models.Adapters;

/// <summary>
/// PEFT LoRA adapters to serve unmerged over one base model (multi-LoRA): each read and checked against the base's configuration
/// by <see cref="LoraWeightMerge.Open"/> (the reader and the checks of <c>--adapter</c> and <c>tessera export</c>: files, target
/// modules, every tensor's name and shape), and the <see cref="MultiLoraBatch"/> to build the model with (the union of their
/// targets), into whose <see cref="MultiLoraLinear"/> layers <see cref="AttachTo"/> copies them once the model is built.
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
    /// as <see cref="LoraWeightMerge.Open"/> does, naming the adapter's directory, for one that does not fit.
    /// </summary>
    public static ServedLoraAdapters Open(IReadOnlyList<LoraModule> modules, TransformerConfig config)
    {
        ArgumentNullException.ThrowIfNull(modules);
        ArgumentNullException.ThrowIfNull(config);
        if (modules.Count == 0) throw new ArgumentException("multi-LoRA: no adapter given", nameof(modules));
        var adapters = modules.Select(m => LoraWeightMerge.Open(m.Directory, config)).ToList();
        var targets = adapters.SelectMany(a => a.Options.Targets).Distinct().ToList();
        return new ServedLoraAdapters(modules, adapters, new MultiLoraBatch(modules.Select(m => m.Name).ToList(), targets));
    }

    /// <summary>
    /// Copies every adapter's A and B into the layers of <paramref name="model"/> (built with <see cref="Batch"/>), on its backend
    /// in its dtype.
    /// </summary>
    public void AttachTo(Transformer model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!ReferenceEquals(model.ServedAdapters, Batch)) throw new ArgumentException("multi-LoRA: the model was not built with these adapters' batch", nameof(model));
        for (int i = 0; i < Adapters.Count; i++)
        {
            var adapters = Adapters[i].Adapters;
            foreach (var layer in adapters.Layers)
            {
                var served = Batch.Layer(layer.Name)
                    ?? throw new InvalidOperationException($"multi-LoRA: adapter '{Modules[i].Name}' adapts {layer.Name}, which the served model built plain");
                foreach (var part in layer.Parts)
                    served.Attach(i, part.Target.Part, layer.Rank, layer.Scaling, adapters.Read(part.A), adapters.Read(part.B));
            }
        }
    }
}
