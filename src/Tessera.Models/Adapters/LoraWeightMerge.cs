using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Models.Adapters;

/// <summary>
/// A PEFT LoRA adapter opened to be merged into a base model's weights one canonical tensor at a time, as a loader reads them
/// (<see cref="HuggingFaceModelDirectory.MergeAdapter"/>): W += alpha / r · B A on each targeted layer's rows, before the loader
/// converts (BF16), quantizes (int8, FP8) or slices (tensor parallelism) anything. It is <c>tessera export</c>'s merge, bit for
/// bit: the adapter is read by <see cref="PeftAdapter.Load"/> into the adapters of a model built the way export builds its own
/// (F32, on the CPU, the same targets, so the same names, shapes and checks), whose base is only declared
/// (<see cref="ArenaStorage.Deferred"/>: no weight buffer), and each weight is folded by its layer's
/// <see cref="LoraLinear.MergeInto"/>, the products <see cref="LoraLinear.Merge"/> runs. Host memory: the adapter itself (F32)
/// plus, while a targeted weight is merged, a few F32 copies of that one weight (as read, on the CPU backend, read back, and a
/// tensor-parallel rank's slice of it); never a copy of the whole model (export holds the whole model in F32).
/// </summary>
public sealed class LoraWeightMerge
{
    private readonly Dictionary<string, LoraLinear> _layers;   // by the canonical name of the weight each adapts
    private readonly CpuBackend _backend;

    private LoraWeightMerge(string directory, LoraAdapters adapters, CpuBackend backend)
    {
        Directory = directory;
        Options = adapters.Options;
        Adapters = adapters;
        _backend = backend;
        _layers = adapters.Layers.ToDictionary(l => l.Weight.Name, StringComparer.Ordinal);
    }

    /// <summary>The adapter's directory.</summary>
    public string Directory { get; }

    /// <summary>Its rank, alpha and targets (from adapter_config.json).</summary>
    public LoraOptions Options { get; }

    /// <summary>The adapter as read: its layers (names, parts, rows) and their A and B values (F32 on the CPU).</summary>
    public LoraAdapters Adapters { get; }

    /// <summary>How many of the model's layers it adapts (Llama's q, k and v adapt one fused layer).</summary>
    public int LayerCount => _layers.Count;

    /// <summary>What a load log says: "DIR (r = 16, alpha = 32, 28 layers)", as <c>tessera export</c> says it.</summary>
    public string Summary => $"{Directory} (r = {Options.Rank}, alpha = {Options.Alpha}, {LayerCount} layers)";

    /// <summary>
    /// Reads the adapter in <paramref name="directory"/> for a model of <paramref name="config"/>, checking everything before any
    /// weight is touched: both files present, adapter_config.json well formed and its target modules layers of the model's family,
    /// and every lora_A and lora_B tensor present with the shape the model's layers need, and no other (an adapter trained for
    /// another model fails here).
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">adapter_config.json or adapter_model.safetensors is missing.</exception>
    /// <exception cref="InvalidDataException">The config is malformed, names modules the model lacks, or a tensor is missing, extra or of another shape.</exception>
    public static LoraWeightMerge Open(string directory, TransformerConfig config)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(config);
        if (!System.IO.Directory.Exists(directory)) throw new DirectoryNotFoundException($"{directory}: no such adapter directory");
        string weights = Path.Combine(directory, PeftAdapter.WeightsFile);
        var options = PeftAdapter.ReadOptions(directory, config);   // reads adapter_config.json first: a missing one is named
        if (!File.Exists(weights))
            throw new FileNotFoundException($"{weights}: missing (a PEFT adapter directory holds {PeftAdapterConfig.FileName} and {PeftAdapter.WeightsFile})", weights);
        // Export's model: F32 on the CPU, the adapter's targets; here the base is declared only, so no weight is allocated.
        var backend = new CpuBackend(Environment.ProcessorCount);
        LoraAdapters adapters;
        try
        {
            adapters = new Transformer(config, backend, DType.F32, ArenaStorage.Deferred, lora: options).Adapters!;
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{Path.Combine(directory, PeftAdapterConfig.FileName)}: {e.Message}", e);
        }
        PeftAdapter.Load(directory, adapters);
        return new LoraWeightMerge(directory, adapters, backend);
    }

    /// <summary>Whether the adapter changes the parameter named <paramref name="canonical"/> (a layer's weight it targets).</summary>
    public bool Adapts(string canonical) => _layers.ContainsKey(canonical);

    /// <summary>
    /// The weight <paramref name="canonical"/> (the whole tensor, in Tessera's layout: (out, in), GPT-2's Conv1D transposed, Llama's
    /// q, k, v stacked by rows) with the adapter merged; <paramref name="tensor"/> itself when the adapter does not target it.
    /// </summary>
    public HostTensor Apply(string canonical, HostTensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (!_layers.TryGetValue(canonical, out var layer)) return tensor;
        var weight = _backend.FromArray(tensor.Validate().Data, tensor.Shape.ToArray());   // (out, in)
        layer.MergeInto(weight);
        return new HostTensor(tensor.Shape, _backend.ToArray<float>(weight));
    }
}
