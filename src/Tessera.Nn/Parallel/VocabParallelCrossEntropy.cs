using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Megatron's vocabulary-parallel cross-entropy: each rank holds the logits of its V/tp columns (the column-parallel head's
/// output), and nothing V-sized is gathered. Each rank reduces its columns to three numbers per row (max, sum of
/// exponentials, the target's logit when it falls in its columns); one all-gather of those (tp x N x 3) lets every rank
/// combine them, in shard order, into the same log-sum-exp and loss; each rank then writes its columns' gradient in place.
/// One collective of 3N values per step, against Megatron's three all-reduces of N.
/// </summary>
public sealed class VocabParallelCrossEntropy
{
    private readonly ActivationKey _statistics, _gathered, _logSumExp;

    /// <summary>
    /// The loss over a vocabulary of <paramref name="vocabulary"/> real ids whose logits are split over
    /// <paramref name="tensorParallelism"/> in <paramref name="localColumns"/> columns per rank (padding columns past the
    /// real vocabulary take no part).
    /// </summary>
    public VocabParallelCrossEntropy(string name, TensorParallelism tensorParallelism, int vocabulary, int localColumns)
    {
        ArgumentNullException.ThrowIfNull(tensorParallelism);
        if (localColumns <= 0) throw new ArgumentOutOfRangeException(nameof(localColumns), $"{name}: {localColumns} local columns");
        TensorParallelism = tensorParallelism;
        LocalColumns = localColumns;
        ColumnOffset = tensorParallelism.Rank * localColumns;
        ValidColumns = Math.Clamp(vocabulary - ColumnOffset, 0, localColumns);
        _statistics = new ActivationKey(name + ".statistics");
        _gathered = new ActivationKey(name + ".statistics.gathered");
        _logSumExp = new ActivationKey(name + ".lse");
    }

    /// <summary>The tensor parallelism it belongs to.</summary>
    public TensorParallelism TensorParallelism { get; }

    /// <summary>Columns of the logits each rank holds.</summary>
    public int LocalColumns { get; }

    /// <summary>The first whole-vocabulary column this rank holds.</summary>
    public int ColumnOffset { get; }

    /// <summary>This rank's columns that are real ids (the rest pad the vocabulary).</summary>
    public int ValidColumns { get; }

    /// <summary>
    /// losses (N) = -log softmax(whole logits)[target] (0 where the target is negative) from this rank's logits (N, V/tp),
    /// and, in their place, their gradient (softmax - onehot) * <paramref name="lossScale"/>.
    /// </summary>
    public void Forward(in PassContext ctx, Tensor logits, Tensor targets, Tensor losses, double lossScale)
    {
        ArgumentNullException.ThrowIfNull(logits);
        if (logits.Rank != 2 || logits.Size(1) != LocalColumns)
            throw new ArgumentException($"vocabulary-parallel cross-entropy: logits {logits.Shape} must be (N, {LocalColumns})");
        var backend = logits.Backend;
        int n = logits.Size(0), tp = TensorParallelism.Size;
        var statistics = ctx.Buffer(_statistics, new Shape(n, 3), losses.DType);            // (N, 3): max, sum of exp, target logit
        backend.CrossEntropyStatistics(logits, targets, ColumnOffset, ValidColumns, statistics);
        var gathered = ctx.Buffer(_gathered, new Shape(tp, n, 3), losses.DType);             // (tp, N, 3), shard order
        TensorParallelism.Group.AllGather(statistics, gathered).WaitOnDevice();
        var logSumExp = ctx.Buffer(_logSumExp, new Shape(n), losses.DType);                  // (N)
        backend.CrossEntropyCombine(gathered, targets, losses, logSumExp);
        backend.CrossEntropyGradient(logits, targets, ColumnOffset, ValidColumns, logSumExp, logits, lossScale);
    }
}
