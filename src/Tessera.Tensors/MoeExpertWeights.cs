namespace Tessera.Tensors;

/// <summary>
/// The weights of a mixture of experts' E SwiGLU experts as the device-routed expert ops read them
/// (<see cref="IBackend.MoeExpertSwiGlu"/>, <see cref="IBackend.MoeExpertDown"/>): expert e's gate and up (F, C) and its
/// down projection (C, F), each a contiguous nn.Linear weight wherever the parameter storage put it. Built once by
/// <see cref="IBackend.PrepareMoeExperts"/> when an inference path first needs it (weights do not move at inference); a
/// backend that launches one kernel over every expert keeps a table of their addresses in <see cref="Addresses"/>.
/// </summary>
public sealed class MoeExpertWeights
{
    /// <summary>Checks the lists (E each, one dtype, gate and up (F, C), down (C, F), contiguous) and keeps them.</summary>
    public MoeExpertWeights(IReadOnlyList<Tensor> gate, IReadOnlyList<Tensor> up, IReadOnlyList<Tensor> down, Tensor? addresses)
    {
        ArgumentNullException.ThrowIfNull(gate); ArgumentNullException.ThrowIfNull(up); ArgumentNullException.ThrowIfNull(down);
        if (gate.Count == 0 || up.Count != gate.Count || down.Count != gate.Count)
            throw new ArgumentException($"MoeExpertWeights: {gate.Count} gate, {up.Count} up and {down.Count} down weights; give one of each per expert (at least one expert)");
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
    }

    /// <summary>Experts E.</summary>
    public int Experts => Gate.Count;

    /// <summary>Each expert's hidden width F.</summary>
    public int Hidden { get; }

    /// <summary>Channels C (the rows' width).</summary>
    public int Channels { get; }

    /// <summary>The weights' dtype (the rows must share it).</summary>
    public DType DType { get; }

    /// <summary>Each expert's gate weight (F, C).</summary>
    public IReadOnlyList<Tensor> Gate { get; }

    /// <summary>Each expert's up weight (F, C).</summary>
    public IReadOnlyList<Tensor> Up { get; }

    /// <summary>Each expert's down (output projection) weight (C, F).</summary>
    public IReadOnlyList<Tensor> Down { get; }

    /// <summary>(E, 6) I32 on the device: expert e's gate, up and down addresses as 64-bit words (two I32 each, little-endian),
    /// for backends whose kernels read them (CUDA); null on the CPU, which reads the tensors.</summary>
    public Tensor? Addresses { get; }
}
