namespace Tessera.Tensors;

/// <summary>
/// The weights of a mixture of experts' E SwiGLU experts as the device-routed expert ops read them
/// (<see cref="IBackend.MoeExpertSwiGlu"/>, <see cref="IBackend.MoeExpertDown"/>): expert e's gate and up (F, C) and its
/// down projection (C, F), each a contiguous nn.Linear weight wherever the parameter storage put it, either in a
/// floating-point dtype (<see cref="Gate"/>, <see cref="Up"/>, <see cref="Down"/>) or quantized (<see cref="QuantizedGate"/>,
/// <see cref="QuantizedUp"/>, <see cref="QuantizedDown"/>: int8 with a scale a row, or group-wise int4 without an input order).
/// Built once by <see cref="IBackend.PrepareMoeExperts(IReadOnlyList{Tensor}, IReadOnlyList{Tensor}, IReadOnlyList{Tensor})"/>
/// (or its quantized overload) when an inference path first needs it (weights do not move at inference); a backend that
/// launches one kernel over every expert keeps a table of their addresses in <see cref="Addresses"/>.
/// </summary>
public sealed class MoeExpertWeights
{
    /// <summary>Checks the lists (E each, one dtype, gate and up (F, C), down (C, F), contiguous) and keeps them;
    /// <paramref name="bandwidthRowDTypes"/> as <see cref="AtWeightBandwidth"/> reads it (null: none).</summary>
    public MoeExpertWeights(IReadOnlyList<Tensor> gate, IReadOnlyList<Tensor> up, IReadOnlyList<Tensor> down, Tensor? addresses,
        IReadOnlyList<DType>? bandwidthRowDTypes = null)
    {
        _bandwidthRowDTypes = bandwidthRowDTypes;
        ArgumentNullException.ThrowIfNull(gate); ArgumentNullException.ThrowIfNull(up); ArgumentNullException.ThrowIfNull(down);
        CheckCounts(gate.Count, up.Count, down.Count);
        var first = gate[0];
        if (first.Rank != 2) throw new ArgumentException($"MoeExpertWeights: expert 0's gate {first.Shape} must be (F, C)");
        Hidden = first.Size(0);
        Channels = first.Size(1);
        DType = first.DType;
        for (int e = 0; e < gate.Count; e++)
            foreach (var (name, w, rows, cols) in new[] { ("gate", gate[e], Hidden, Channels), ("up", up[e], Hidden, Channels), ("down", down[e], Channels, Hidden) })
            {
                if (w.Rank != 2 || w.Size(0) != rows || w.Size(1) != cols)
                    throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} {w.Shape} must be ({rows}, {cols}) like expert 0's");
                if (w.DType != DType) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} is {w.DType}, expert 0's gate {DType}; every expert weight must share one dtype");
                if (!w.IsContiguous) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} {w.Shape} must be contiguous");
                if (w.Backend != first.Backend) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} lives on another backend than expert 0's gate");
            }
        Gate = gate;
        Up = up;
        Down = down;
        Addresses = addresses;
        Backend = first.Backend;
        GroupSize = Channels;
        DownGroupSize = Hidden;
    }

    /// <summary>
    /// Checks quantized lists (E each; gate and up (F, C) and down (C, F); all int8, or all group-wise int4 with one group size
    /// for gate and up and one for down; no input order; on one backend) and keeps them.
    /// </summary>
    /// <param name="gate">Each expert's gate weight (F, C).</param>
    /// <param name="up">Each expert's up weight (F, C).</param>
    /// <param name="down">Each expert's down weight (C, F).</param>
    /// <param name="addresses">The backend's table of addresses, or null.</param>
    /// <param name="rowDTypes">The rows' dtypes the backend's expert kernels take (CUDA: F32, BF16, F16), or null for every
    /// floating-point dtype.</param>
    /// <param name="bandwidthRowDTypes">The rows' dtypes at which the backend's expert products run at the weights' bandwidth
    /// (<see cref="AtWeightBandwidth"/>), or null for none.</param>
    /// <exception cref="ArgumentException">The lists disagree, or a weight is FP8 or carries an input order (GPTQ's activation
    /// order), which the expert ops do not read.</exception>
    public MoeExpertWeights(IReadOnlyList<QuantizedWeight> gate, IReadOnlyList<QuantizedWeight> up, IReadOnlyList<QuantizedWeight> down, Tensor? addresses,
        IReadOnlyList<DType>? rowDTypes = null, IReadOnlyList<DType>? bandwidthRowDTypes = null)
    {
        _rowDTypes = rowDTypes;
        _bandwidthRowDTypes = bandwidthRowDTypes;
        ArgumentNullException.ThrowIfNull(gate); ArgumentNullException.ThrowIfNull(up); ArgumentNullException.ThrowIfNull(down);
        CheckCounts(gate.Count, up.Count, down.Count);
        var first = gate[0];
        Hidden = first.Rows;
        Channels = first.Columns;
        DType = first.Values.DType;
        var down0 = down[0];
        for (int e = 0; e < gate.Count; e++)
            foreach (var (name, w, like) in new[] { ("gate", gate[e], first), ("up", up[e], first), ("down", down[e], down0) })
            {
                if (w.IsFp8) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} is FP8; the expert ops read int8 and int4 weights (FP8 products quantize x as well)");
                if (w.InputOrder is not null) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} has an input order (activation order); the expert ops do not gather x");
                var shape = name == "down" ? new Shape(Channels, Hidden) : new Shape(Hidden, Channels);
                if (w.Shape != shape) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} {w.Shape} must be {shape} like expert 0's");
                if (!w.IsLike(like)) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} is not stored as expert 0's {(name == "down" ? "down" : "gate")} (values {w.Values.DType} against {like.Values.DType}, int4 {w.IsInt4} against {like.IsInt4}, groups of {w.GroupSize} against {like.GroupSize})");
                if (!ReferenceEquals(w.Values.Backend, first.Values.Backend)) throw new ArgumentException($"MoeExpertWeights: expert {e}'s {name} lives on another backend than expert 0's gate");
            }
        if (down0.IsInt4 != first.IsInt4 || down0.Values.DType != first.Values.DType)
            throw new ArgumentException($"MoeExpertWeights: the down weights ({down0.Values.DType}) and the gate and up weights ({first.Values.DType}) must be quantized alike");
        QuantizedGate = gate;
        QuantizedUp = up;
        QuantizedDown = down;
        Gate = Up = Down = [];
        GroupSize = first.GroupSize;
        DownGroupSize = down0.GroupSize;
        Addresses = addresses;
        Backend = first.Values.Backend;
    }

    private static void CheckCounts(int gate, int up, int down)
    {
        if (gate == 0 || up != gate || down != gate)
            throw new ArgumentException($"MoeExpertWeights: {gate} gate, {up} up and {down} down weights; give one of each per expert (at least one expert)");
    }

    /// <summary>Experts E.</summary>
    public int Experts => QuantizedGate?.Count ?? Gate.Count;

    /// <summary>Each expert's hidden width F.</summary>
    public int Hidden { get; }

    /// <summary>Channels C (the rows' width).</summary>
    public int Channels { get; }

    /// <summary>The floating-point weights' dtype (the rows must share it), or the quantized weights' values' dtype (I8, or I32
    /// for int4's packed nibbles; the rows may then be any floating-point dtype).</summary>
    public DType DType { get; }

    /// <summary>The backend that holds the weights.</summary>
    public IBackend Backend { get; }

    /// <summary>True for quantized experts (<see cref="QuantizedGate"/> and its kin; <see cref="Gate"/> and its kin are empty).</summary>
    public bool IsQuantized => QuantizedGate is not null;

    /// <summary>True for group-wise int4 experts.</summary>
    public bool IsInt4 => QuantizedGate is { } q && q[0].IsInt4;

    /// <summary>Whether rows (x, the hidden rows and the outputs) of <paramref name="dtype"/> go with these weights: the
    /// weights' own dtype, or for quantized experts a floating-point dtype the backend's kernels take.</summary>
    public bool TakesRows(DType dtype) => !IsQuantized ? dtype == DType
        : _rowDTypes?.Contains(dtype) ?? dtype is DType.F32 or DType.F64 or DType.BF16 or DType.F16;

    /// <summary>What the rows must be, for messages.</summary>
    public string RowsDescription => !IsQuantized ? DType.ToString()
        : _rowDTypes is { } t ? string.Join(" or ", t) : "a floating-point dtype";

    private readonly IReadOnlyList<DType>? _rowDTypes;

    /// <summary>
    /// Whether the backend runs these experts' products over rows of <paramref name="dtype"/> at the weights' bandwidth, each
    /// weight read once a step and x's rows once a tile whatever the experts' width (CUDA: on tensor cores, moe.cu's
    /// <c>moe_gemm_*</c>), rather than bound by arithmetic and x's re-reads once the experts are wide (CUDA's CUDA-core expert
    /// kernels; the CPU's products). Wide experts take the device-routed path only where this holds
    /// (<c>SparseMoeFeedForward.DeviceRoutingMaxExpertWeights</c>).
    /// </summary>
    public bool AtWeightBandwidth(DType dtype) => _bandwidthRowDTypes?.Contains(dtype) ?? false;

    private readonly IReadOnlyList<DType>? _bandwidthRowDTypes;

    /// <summary>Each expert's gate weight (F, C); empty for quantized experts.</summary>
    public IReadOnlyList<Tensor> Gate { get; }

    /// <summary>Each expert's up weight (F, C); empty for quantized experts.</summary>
    public IReadOnlyList<Tensor> Up { get; }

    /// <summary>Each expert's down (output projection) weight (C, F); empty for quantized experts.</summary>
    public IReadOnlyList<Tensor> Down { get; }

    /// <summary>Each expert's quantized gate weight (F, C), or null for floating-point experts.</summary>
    public IReadOnlyList<QuantizedWeight>? QuantizedGate { get; }

    /// <summary>Each expert's quantized up weight (F, C), or null.</summary>
    public IReadOnlyList<QuantizedWeight>? QuantizedUp { get; }

    /// <summary>Each expert's quantized down weight (C, F), or null.</summary>
    public IReadOnlyList<QuantizedWeight>? QuantizedDown { get; }

    /// <summary>The gate and up weights' group size (int4), or C for int8 and floating-point weights.</summary>
    public int GroupSize { get; }

    /// <summary>The down weights' group size (int4), or F for int8 and floating-point weights.</summary>
    public int DownGroupSize { get; }

    /// <summary>On the device, for backends whose kernels read them (CUDA), expert e's addresses as 64-bit words (two I32 each,
    /// little-endian): (E, 6) I32 for floating-point experts (gate, up, down), (E, 18) for quantized ones (gate's values, scales
    /// and zeros, then up's, then down's; an int8 weight's zeros address 0); null on the CPU, which reads the tensors.</summary>
    public Tensor? Addresses { get; }
}
