using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Training.Optim;

/// <summary>
/// Which gradient elements a rank of a split model counts toward the global gradient norm, and the groups it sums over: the
/// norm must see every global element once. Under tensor parallelism a replicated parameter is counted by the group's rank 0
/// alone and a key/value head replicated over a block of ranks by the block's first rank (<see cref="Parameter.CanonicalRanges"/>);
/// under pipeline parallelism each stage counts its own parameters, except the last stage's copy of a tied token embedding
/// (the first stage counts the table). The squares are then all-reduced over the tensor-parallel group, then the pipeline
/// group. Under expert parallelism each rank counts its own experts and the expert-parallel group's rank 0 counts the rest
/// (replicated over the group), and the squares are summed over the expert-parallel group. A model on one device has no
/// scope and the optimizers sum the whole arena, as always.
/// </summary>
public sealed class GradientNormScope
{
    private readonly (long Start, long Length)[] _ranges;

    private GradientNormScope((long Start, long Length)[] ranges, ProcessGroup[] groups)
    {
        _ranges = ranges;
        Groups = groups;
    }

    /// <summary>The scope of <paramref name="model"/>'s rank, or null when the model is split over neither a tensor-parallel nor a pipeline group.</summary>
    public static GradientNormScope? For(Transformer model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var tp = model.TensorParallelism;
        if (model.ExpertParallelism is { } ep)
        {
            // The model refuses ep with tp or pp: only the expert split needs counting.
            var experts = model.Layers.ExpertParameters;
            var counted = model.Layout.Parameters.Where(p => ep.Rank == 0 || experts.Contains(p.Name))
                .Select(p => (p.Offset, p.NumElements)).Where(r => r.NumElements > 0).ToArray();
            return new GradientNormScope(counted, [ep.Group]);
        }
        if (tp is null && model.Pipeline is null) return null;
        var ranges = new List<(long, long)>();
        foreach (var p in model.Layout.Parameters)
        {
            if (ReferenceEquals(p, model.TiedEmbeddingCopy)) continue;             // the first stage counts the tied table
            if (tp is not null && p.Placement.IsReplicated && tp.Rank != 0) continue;   // every tp rank holds it whole: rank 0 counts it
            foreach (var (start, length) in p.CanonicalRanges())
                if (length > 0) ranges.Add((p.Offset + start, length));
        }
        var groups = new[] { tp?.Group, model.Pipeline?.Group }.OfType<ProcessGroup>().ToArray();
        return new GradientNormScope([.. ranges], groups);
    }

    /// <summary>
    /// The scope of <paramref name="trained"/>, the layout a rank's optimizer updates: the model's own (<see cref="For(Transformer)"/>),
    /// or its LoRA adapters' layout, which is split over the tensor-parallel group as the base layers are (a replicated factor
    /// counted by the group's rank 0 alone, a split one by every rank, B rows of replicated key/value heads by each block's first
    /// rank) and summed over that group; null for adapters of a model on one device.
    /// </summary>
    public static GradientNormScope? For(Transformer model, ParameterLayout trained)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(trained);
        if (ReferenceEquals(trained, model.Layout)) return For(model);
        if (model.Pipeline is not null || model.ExpertParallelism is not null)
            throw new NotSupportedException("gradient norm: a trained layout other than the model's (LoRA adapters) is split over tensor-parallel ranks only");
        if (model.TensorParallelism is not { } tp) return null;
        var ranges = new List<(long, long)>();
        foreach (var p in trained.Parameters)
        {
            if (p.Placement.IsReplicated && tp.Rank != 0) continue;              // every tp rank holds it (its gradient summed): rank 0 counts it
            foreach (var (start, length) in p.CanonicalRanges())
                if (length > 0) ranges.Add((p.Offset + start, length));
        }
        return new GradientNormScope([.. ranges], [tp.Group]);
    }

    /// <summary>The groups the squares are summed over, in order: the tensor-parallel group, then the pipeline group (those the model is split over); or the expert-parallel group.</summary>
    public IReadOnlyList<ProcessGroup> Groups { get; }

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

    /// <summary>Collective over the tensor-parallel, then the pipeline group: sums every rank's partial sum of squares in place.</summary>
    public void Reduce(Tensor sumOfSquares)
    {
        foreach (var group in Groups) group.AllReduce(sumOfSquares, ReduceOp.Sum).WaitOnDevice();
    }
}
