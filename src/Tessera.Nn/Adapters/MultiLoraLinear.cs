using Tessera.Nn.Layers;
using Tessera.Tensors;

namespace Tessera.Nn.Adapters;

/// <summary>
/// A linear layer that serves several LoRA adapters unmerged over its base weight, each row of a step with its own adapter or
/// none (<see cref="MultiLoraBatch"/>): y = x W^T + b, then, on the output rows of each part p (the whole layer, or the query, key
/// or value rows of a fused QKV), y_p += (x A_p^T ⊙ M_p) B_p^T. A_p (R, in) and B_p (rows, R) stack the adapters that target the
/// part along the rank (R = the sum of their ranks), and the step's mask M_p (N, R) holds alpha/r of row i's adapter in that
/// adapter's columns and zeros elsewhere. So every adapter present costs two products per part whatever the step's mix, without a
/// gather or scatter of rows; the price is that each row's low-rank product runs over every stacked adapter's columns (R instead
/// of its own r: small beside the base product while R stays far below the layer's width). Inference only; built by the
/// <see cref="Parallel.LayerFactory"/> in place of the plain layers the served adapters target.
/// </summary>
public sealed class MultiLoraLinear : Linear
{
    private readonly MultiLoraBatch _batch;
    private readonly (int Start, int Rows)[] _parts;                 // the layer's output parts (a fused QKV's q, k, v), or one: all rows
    private readonly List<Adapter> _adapters = [];
    private Stack[]? _stacks;                                        // per part with adapters: built on first use after an Attach
    private readonly ActivationKey _hidden;

    private sealed record Adapter(int Index, int Part, int Rank, double Scaling, double[] A, double[] B);   // A (r, in), B (rows, r), host F64

    private sealed record Stack(int Start, int Rows, Tensor A, Tensor B, IReadOnlyList<(int Adapter, int Column, int Rank, double Scaling)> Entries,
        int Columns, string Signature);                             // A (R, in), B (rows, R)

    /// <summary>
    /// Serves the adapters of <paramref name="batch"/> over <paramref name="layer"/> (a plain, replicated linear layer) whose output
    /// rows are the parts <paramref name="partRows"/> (row counts, in order; one part for a layer not declared in parts).
    /// </summary>
    public MultiLoraLinear(Linear layer, IReadOnlyList<int> partRows, MultiLoraBatch batch)
        : base(layer?.Name ?? throw new ArgumentNullException(nameof(layer)), layer.Weight, layer.Bias)
    {
        ArgumentNullException.ThrowIfNull(partRows);
        ArgumentNullException.ThrowIfNull(batch);
        if (layer.GetType() != typeof(Linear))
            throw new NotSupportedException($"{layer.Name}: multi-LoRA serves adapters over plain linear layers; this one is a {layer.GetType().Name} (tensor-parallel layers are not adapted)");
        if (partRows.Sum() != OutFeatures) throw new ArgumentException($"{Name}: output parts of {string.Join(" + ", partRows)} rows do not make its {OutFeatures}");
        _parts = new (int, int)[partRows.Count];
        for (int i = 0, start = 0; i < partRows.Count; start += partRows[i], i++) _parts[i] = (start, partRows[i]);
        _batch = batch;
        _hidden = new ActivationKey(Name + ".multilora.h");
        batch.Add(this);
    }

    /// <summary>How many adapters this layer serves (an adapter targeting two parts counts once a part).</summary>
    public int AdapterParts => _adapters.Count;

    /// <summary>
    /// Adds adapter <paramref name="index"/> of the batch on output part <paramref name="part"/> (null: the whole layer): A (r, in)
    /// and B (rows, r) row-major host values, scaled by <paramref name="scaling"/> (alpha / r). Copied to the weight's backend in its
    /// dtype on the next forward pass.
    /// </summary>
    public void Attach(int index, int? part, int rank, double scaling, double[] a, double[] b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (index < 0 || index >= _batch.Names.Count) throw new ArgumentOutOfRangeException(nameof(index), $"{Name}: adapter {index} is none of the batch's {_batch.Names.Count}");
        int p = part ?? (_parts.Length == 1 ? 0 : -1);               // -1: a whole-layer adapter on a layer declared in parts (GPT-2's c_attn)
        if (part is not null && (p < 0 || p >= _parts.Length)) throw new ArgumentException($"{Name}: the layer has {_parts.Length} output parts, not a part {p}");
        int rows = p < 0 ? OutFeatures : _parts[p].Rows;
        if (rank <= 0 || a.Length != rank * InFeatures || b.Length != rows * rank)
            throw new ArgumentException($"{Name}: adapter '{_batch.Names[index]}' has {a.Length} A and {b.Length} B values; expected ({rank}, {InFeatures}) and ({rows}, {rank})");
        if (_adapters.Any(x => x.Index == index && x.Part == p)) throw new ArgumentException($"{Name}: adapter '{_batch.Names[index]}' is attached to this part already");
        _adapters.Add(new Adapter(index, p, rank, scaling, a, b));
        DisposeStacks();
    }

    /// <inheritdoc/>
    public override bool IsPlainProduct => base.IsPlainProduct && !_batch.Active;

    /// <inheritdoc/>
    public override Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        var y = base.Forward(ctx, x, residual);                      // (N, out) = x W^T + b (+ residual)
        AddLowRank(ctx, x, y);
        return y;
    }

    /// <inheritdoc/>
    public override Tensor ForwardNormalized(in PassContext ctx, Tensor x, INormalization norm)
    {
        if (!_batch.Active) return base.ForwardNormalized(ctx, x, norm);
        return Forward(ctx, norm.Forward(ctx, x));                   // the low-rank terms read the normalized rows
    }

    /// <inheritdoc/>
    public override void ForwardAccumulate(in PassContext ctx, Tensor x, Tensor residual)
    {
        base.ForwardAccumulate(ctx, x, residual);                    // residual (N, out) += x W^T + b
        AddLowRank(ctx, x, residual);
    }

    /// <summary>GPT-2's MLP up projection: the low-rank terms enter before the GELU, so an adapter step runs it in two steps.</summary>
    public override Tensor ForwardGelu(in PassContext ctx, Tensor x, Tensor preActivation)
    {
        if (!_batch.Active) return base.ForwardGelu(ctx, x, preActivation);
        CheckInput(x);
        Product(x, preActivation, Bias?.Value);                                                // (N, out)
        AddLowRank(ctx, x, preActivation);
        var y = ctx.Buffer(OutputKey, preActivation.Shape, x.DType);                          // (N, out)
        x.Backend.GeluForward(preActivation, y);
        return y;
    }

    /// <inheritdoc/>
    public override void Backward(in PassContext ctx, Tensor dy, Tensor? dx, bool accumulateDx = false, Tensor? geluPreActivation = null,
        Tensor? preActivationBiasGradient = null, bool biasGradientTaken = false) =>
        throw new NotSupportedException($"{Name}: served LoRA adapters are for inference; train one adapter at a time (tessera train --lora)");

    /// <summary>y[:, part rows] += (x A^T ⊙ M) B^T for every part with an adapter in the step's rows.</summary>
    private void AddLowRank(in PassContext ctx, Tensor x, Tensor y)
    {
        if (!_batch.Active || _adapters.Count == 0) return;
        int n = x.Size(0);
        if (n != _batch.Rows) throw new InvalidOperationException($"{Name}: the step has {_batch.Rows} rows set but the input has {n}");
        var backend = x.Backend;
        foreach (var stack in Stacks(backend, x.DType))
        {
            if (!stack.Entries.Any(e => _batch.Uses(e.Adapter))) continue;
            var mask = _batch.Mask(backend, x.DType, stack.Entries, stack.Columns, stack.Signature);   // (N, R)
            var h = ctx.Buffer(_hidden, new Shape(n, stack.Columns), x.DType);                        // (N, R)
            backend.MatMul(x, stack.A, h, transposeB: true);
            backend.Multiply(h, mask, h);
            backend.MatMul(h, stack.B, y.Slice(1, stack.Start, stack.Rows), transposeB: true, beta: 1.0);
        }
    }

    private Stack[] Stacks(IBackend backend, DType dtype)
    {
        if (_stacks is not null && (_stacks.Length == 0 || _stacks[0].A.DType == dtype)) return _stacks;
        DisposeStacks();
        var stacks = new List<Stack>();
        foreach (var group in _adapters.GroupBy(a => a.Part).OrderBy(g => g.Key))
        {
            var members = group.OrderBy(a => a.Index).ToList();
            int start = group.Key < 0 ? 0 : _parts[group.Key].Start, rows = group.Key < 0 ? OutFeatures : _parts[group.Key].Rows;
            int columns = members.Sum(m => m.Rank), inFeatures = InFeatures;
            var a = new double[columns * inFeatures];                // (R, in): the adapters' A stacked by rows
            var b = new double[rows * columns];                      // (rows, R): their B side by side
            var entries = new List<(int, int, int, double)>();
            int column = 0;
            foreach (var m in members)
            {
                m.A.CopyTo(a, column * inFeatures);
                for (int r = 0; r < rows; r++) Array.Copy(m.B, r * m.Rank, b, r * columns + column, m.Rank);
                entries.Add((m.Index, column, m.Rank, m.Scaling));
                column += m.Rank;
            }
            string signature = string.Join("|", entries.Select(e => $"{e.Item1}:{e.Item2}:{e.Item3}:{e.Item4:R}"));
            stacks.Add(new Stack(start, rows, Upload(backend, dtype, a, new Shape(columns, inFeatures)), Upload(backend, dtype, b, new Shape(rows, columns)),
                entries, columns, signature));
        }
        return _stacks = [.. stacks];
    }

    private static Tensor Upload(IBackend backend, DType dtype, double[] values, Shape shape)
    {
        var t = backend.Allocate(shape, dtype);
        CopyFromHost(backend, values, t);
        return t;
    }

    /// <summary>
    /// Copies host values into <paramref name="target"/>, rounded to its dtype (F64, F32, BF16 or F16, the dtypes a served model
    /// computes in): the adapters' stacked factors and the step's masks.
    /// </summary>
    internal static void CopyFromHost(IBackend backend, double[] values, Tensor target)
    {
        switch (target.DType)
        {
            case DType.F64: backend.CopyFromHost<double>(values, target); break;
            case DType.F32: backend.CopyFromHost<float>(Array.ConvertAll(values, v => (float)v), target); break;
            case DType.BF16: backend.CopyFromHost<BFloat16>(Array.ConvertAll(values, v => BFloat16.FromSingle((float)v)), target); break;
            case DType.F16: backend.CopyFromHost<Half>(Array.ConvertAll(values, v => (Half)v), target); break;
            default: throw new NotSupportedException($"multi-LoRA: adapters are served in F64, F32, BF16 or F16, not {target.DType}");
        }
    }

    private void DisposeStacks()
    {
        if (_stacks is null) return;
        foreach (var s in _stacks) { s.A.Storage.Dispose(); s.B.Storage.Dispose(); }
        _stacks = null;
    }
}
