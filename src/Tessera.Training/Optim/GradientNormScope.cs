using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Training.Optim;

/// <summary>
/// Which gradient elements a tensor-parallel rank counts toward the global gradient norm, and the group it sums over: the
/// norm must see every global element once, so a replicated parameter is counted by the group's rank 0 alone and a
/// key/value head replicated over a block of ranks by the block's first rank (<see cref="Parameter.CanonicalRanges"/>),
/// and the squares are then all-reduced over the tensor-parallel group. Without tensor parallelism there is no scope and
/// the optimizers sum the whole arena, as always.
/// </summary>
public sealed class GradientNormScope
{
    private readonly (long Start, long Length)[] _ranges;

    private GradientNormScope((long Start, long Length)[] ranges, ProcessGroup group)
    {
        _ranges = ranges;
        Group = group;
    }

    /// <summary>The scope of <paramref name="model"/>'s rank, or null when the model is not split over a tensor-parallel group.</summary>
    public static GradientNormScope? For(Transformer model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.TensorParallelism is not { } tp) return null;
        var ranges = new List<(long, long)>();
        foreach (var p in model.Layout.Parameters)
        {
            if (p.Placement.IsReplicated && tp.Rank != 0) continue;   // every rank holds it whole: rank 0 counts it
            foreach (var (start, length) in p.CanonicalRanges())
                if (length > 0) ranges.Add((p.Offset + start, length));
        }
        return new GradientNormScope([.. ranges], tp.Group);
    }

    /// <summary>The tensor-parallel group the squares are summed over.</summary>
    public ProcessGroup Group { get; }

    /// <summary>The arena ranges [Start, Start + Length) this rank counts, in arena order.</summary>
    public IReadOnlyList<(long Start, long Length)> Ranges => _ranges;

    /// <summary>
    /// result += the sum of squares of the counted elements of the arena range [<paramref name="arenaOffset"/>,
    /// + gradient's elements), whose gradient is <paramref name="gradient"/> (flat, contiguous).
    /// </summary>
    public void SumOfSquares(IBackend backend, long arenaOffset, Tensor gradient, Tensor result)
    {
        long end = arenaOffset + gradient.NumElements;
        foreach (var (start, length) in _ranges)
        {
            long lo = Math.Max(start, arenaOffset), hi = Math.Min(start + length, end);
            if (lo >= hi) continue;
            backend.SumOfSquares(gradient.Narrow(lo - arenaOffset, new Shape(checked((int)(hi - lo)))), result);
        }
    }

    /// <summary>Collective over the tensor-parallel group: sums every rank's partial sum of squares in place.</summary>
    public void Reduce(Tensor sumOfSquares) => Group.AllReduce(sumOfSquares, ReduceOp.Sum).WaitOnDevice();
}
