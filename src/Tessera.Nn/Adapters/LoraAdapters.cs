using Tessera.Tensors;

namespace Tessera.Nn.Adapters;

/// <summary>
/// The LoRA adapters of one model: their own <see cref="ParameterLayout"/> and trainable <see cref="ParameterArena"/> (values,
/// gradients and, for BF16, F32 masters: what the optimizer updates), beside the model's frozen arena, and the
/// <see cref="LoraLinear"/> layers that use them. Built by the model from its <see cref="Parallel.LayerFactory"/>.
/// </summary>
public sealed class LoraAdapters
{
    /// <summary>Allocates the adapters of <paramref name="layout"/> for <paramref name="layers"/> (values zero until <see cref="Initialize"/>).</summary>
    public LoraAdapters(LoraOptions options, ParameterLayout layout, IReadOnlyList<LoraLinear> layers, IBackend backend, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(layers);
        Options = options;
        Layout = layout;
        Layers = layers;
        Arena = new ParameterArena(layout, backend, dtype);   // attaches itself to the adapters' layout
    }

    /// <summary>Rank, alpha, dropout and targets.</summary>
    public LoraOptions Options { get; }

    /// <summary>The adapters' parameters ("blocks.3.attn.qkv.q.lora_A", ...), in the model's declaration order.</summary>
    public ParameterLayout Layout { get; }

    /// <summary>Their values, gradients and masters: the arena a trainer's optimizer updates.</summary>
    public ParameterArena Arena { get; }

    /// <summary>The adapted layers.</summary>
    public IReadOnlyList<LoraLinear> Layers { get; }

    /// <summary>Trainable elements.</summary>
    public long ParameterCount => Layout.ParameterCount;

    /// <summary>Whether the adapters are folded into the base weights.</summary>
    public bool Merged => Layers.Count > 0 && Layers[0].Merged;

    /// <summary>Whether training passes apply dropout (turn off for evaluation). Default true.</summary>
    public bool DropoutEnabled
    {
        get => Layers.All(l => l.DropoutEnabled);
        set { foreach (var l in Layers) l.DropoutEnabled = value; }
    }

    /// <summary>Each adapted layer's <see cref="LoraLinear.MasksDrawn"/>, in layer order: the adapters' random state (a checkpoint saves it).</summary>
    public long[] MasksDrawn
    {
        get => Layers.Select(l => l.MasksDrawn).ToArray();
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (value.Length != Layers.Count) throw new ArgumentException($"LoRA: {value.Length} dropout mask counts for {Layers.Count} adapted layers");
            for (int i = 0; i < value.Length; i++) Layers[i].MasksDrawn = value[i];
        }
    }

    /// <summary>
    /// PEFT's initialization (<c>init_lora_weights=True</c>), deterministic for <paramref name="seed"/>: each A Kaiming-uniform
    /// with a = sqrt(5) (torch.nn.Linear's default), that is U(-1/sqrt(in), 1/sqrt(in)); each B zero, so the adapted model
    /// starts equal to the base. Drawn in F64 on the host in declaration order, each whole (global) tensor, of which a
    /// tensor-parallel rank keeps its share: every layout holds the values of one device's initialization. Writes the masters,
    /// then the values.
    /// </summary>
    public void Initialize(int seed)
    {
        var rng = new Random(seed);
        foreach (var p in Layout.Parameters)
        {
            var values = new double[p.GlobalShape.NumElements];
            if (p.Name.EndsWith(".lora_A", StringComparison.Ordinal))
            {
                double bound = 1.0 / Math.Sqrt(p.GlobalShape[1]);
                for (int i = 0; i < values.Length; i++) values[i] = (2 * rng.NextDouble() - 1) * bound;
            }
            Write(p, p.LocalValues(values));
        }
    }

    /// <summary>Writes host values (F64: this rank's local tensor) into <paramref name="parameter"/>'s master (or value) and its value.</summary>
    public void Write(Parameter parameter, ReadOnlySpan<double> values)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        if (!Layout.Contains(parameter.Name) || !ReferenceEquals(Layout[parameter.Name], parameter))
            throw new ArgumentException($"parameter '{parameter.Name}' is not one of these adapters");
        if (values.Length != parameter.NumElements)
            throw new ArgumentException($"adapter '{parameter.Name}': {values.Length} values for {parameter.Shape}");
        var backend = Arena.Backend;
        var target = parameter.MasterOrValue;
        if (target.DType == DType.F64) backend.CopyFromHost(values, target);
        else
        {
            var f = new float[values.Length];
            for (int i = 0; i < f.Length; i++) f[i] = (float)values[i];
            backend.CopyFromHost<float>(f, target);
        }
        if (parameter.Master is not null) backend.Copy(parameter.Master, parameter.Value);
    }

    /// <summary>Reads <paramref name="parameter"/>'s authoritative values (the F32 master under mixed precision) to the host, in F64: this rank's local tensor.</summary>
    public double[] Read(Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        var source = parameter.MasterOrValue;
        var backend = Arena.Backend;
        if (source.DType == DType.F64)
        {
            var d = new double[parameter.NumElements];
            backend.CopyToHost<double>(source, d);
            return d;
        }
        var f = new float[parameter.NumElements];
        backend.CopyToHost<float>(source.DType == DType.F32 ? source : backend.Contiguous(source, DType.F32), f);
        return Array.ConvertAll(f, v => (double)v);
    }

    /// <summary>Folds every adapter into its base weight (W += alpha/r · B A); see <see cref="LoraLinear.Merge"/>.</summary>
    public void Merge()
    {
        foreach (var l in Layers) l.Merge();
    }

    /// <summary>Takes the adapters back out of the base weights; see <see cref="LoraLinear.Unmerge"/>.</summary>
    public void Unmerge()
    {
        foreach (var l in Layers) l.Unmerge();
    }
}
