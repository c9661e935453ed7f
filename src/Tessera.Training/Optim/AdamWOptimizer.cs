using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Training.Optim;

/// <summary>
/// AdamW over a <see cref="ParameterArena"/>: moments m and v are arenas of the same layout,
/// the global gradient norm is summed on the device and the clipping factor is applied inside
/// the update, so a step needs no host synchronization. Consecutive parameters with the same
/// weight-decay setting are updated by one fused call over their arena range. Under mixed precision the F32 masters are
/// updated and the BF16 values written from them; with split masters (<see cref="MasterWeights.Split"/>) each master is
/// joined from its value and low word, updated and split back inside the call (<see cref="IBackend.AdamWSplit"/>), bitwise
/// the same master trajectory as separate masters.
/// </summary>
public sealed class AdamWOptimizer
{
    private readonly ParameterArena _arena;
    private readonly List<(long Offset, long Length, bool Decay)> _ranges = [];
    private AdamWRange[]? _rangeList;   // _ranges for IBackend.AdamWRanges, made at the first step
    private readonly Tensor _flatValues, _flatGrads;
    private readonly Tensor? _lowPrecisionValues;   // the BF16 values beside F32 masters, else null
    private readonly Tensor? _lowWords;             // split masters: the low words beside the BF16 values (their high halves), else null

    /// <summary>
    /// Creates zeroed moments for <paramref name="arena"/>. Under tensor parallelism <paramref name="normScope"/> says which
    /// elements this rank counts toward the global gradient norm and sums them over its group; null sums the whole arena.
    /// </summary>
    public AdamWOptimizer(ParameterArena arena, AdamWOptions options, GradientNormScope? normScope = null)
    {
        ArgumentNullException.ThrowIfNull(arena);
        if (arena.MastersReleased)
            throw new InvalidOperationException("AdamW: the arena's masters are offloaded; the one-rank optimizer needs the whole arena (an offloaded run updates through its data-parallel strategy)");
        _arena = arena;
        Options = options;
        NormScope = normScope;
        var backend = arena.Backend;
        // Mixed precision: F32 moments update the F32 masters; the low-precision values are written through lowPrecisionCopy.
        M = backend.Zeros(arena.Values.Shape, arena.MasterDType);
        V = backend.Zeros(arena.Values.Shape, arena.MasterDType);
        GradSumOfSquares = backend.Zeros(new Shape(1), arena.MasterDType);
        _flatValues = arena.Masters ?? arena.Values;
        _flatGrads = arena.Grads;
        _lowPrecisionValues = arena.Masters is null ? null : arena.Values;
        _lowWords = arena.LowWords;

        // Merge runs of parameters that share a decay setting; cap a run so its length fits an int dimension.
        const long maxRun = 1L << 30;
        foreach (var p in arena.Parameters)
        {
            long len = (p.NumElements + ParameterArena.Alignment - 1) / ParameterArena.Alignment * ParameterArena.Alignment;
            if (_ranges.Count > 0)
            {
                var last = _ranges[^1];
                if (last.Decay == p.WeightDecay && last.Offset + last.Length == p.Offset && last.Length + len <= maxRun)
                {
                    _ranges[^1] = (last.Offset, last.Length + len, last.Decay);
                    continue;
                }
            }
            _ranges.Add((p.Offset, len, p.WeightDecay));
        }
    }

    /// <summary>The arena it updates.</summary>
    public ParameterArena Arena => _arena;

    /// <summary>Fixed hyper-parameters.</summary>
    public AdamWOptions Options { get; }

    /// <summary>The tensor-parallel scope of the gradient norm, or null (the whole arena, on this rank alone).</summary>
    public GradientNormScope? NormScope { get; }

    /// <summary>First moments, laid out like the arena.</summary>
    public Tensor M { get; }

    /// <summary>Second moments, laid out like the arena.</summary>
    public Tensor V { get; }

    /// <summary>Sum of squared gradients of the last step (scalar, on the device).</summary>
    public Tensor GradSumOfSquares { get; }

    /// <summary>Number of updates taken; the next update uses StepCount + 1 for bias correction.</summary>
    public long StepCount { get; set; }

    /// <summary>Applies one update with learning rate <paramref name="learningRate"/> using the gradients in the arena.</summary>
    public void Step(double learningRate)
    {
        var backend = _arena.Backend;
        backend.Fill(GradSumOfSquares, 0);
        if (NormScope is null) backend.SumOfSquares(_arena.Grads, GradSumOfSquares);
        else
        {
            NormScope.SumOfSquares(backend, 0, _flatGrads, GradSumOfSquares);
            NormScope.Reduce(GradSumOfSquares);
        }
        StepCount++;
        if (_lowWords is null)
        {
            // One call for the whole arena: the CUDA backend updates every range in one launch.
            var all = new AdamWStep(learningRate, Options.Beta1, Options.Beta2, Options.Epsilon, Options.WeightDecay, StepCount, Options.MaxGradNorm);
            _rangeList ??= [.. _ranges.Select(r => new AdamWRange(r.Offset, r.Length, r.Decay))];
            backend.AdamWRanges(_flatValues, _flatGrads, M, V, _rangeList, all, Options.MaxGradNorm > 0 ? GradSumOfSquares : null, _lowPrecisionValues);
            return;
        }
        foreach (var (offset, length, decay) in _ranges)
        {
            var shape = new Shape((int)length);
            var step = new AdamWStep(learningRate, Options.Beta1, Options.Beta2, Options.Epsilon,
                decay ? Options.WeightDecay : 0.0, StepCount, Options.MaxGradNorm);
            var sumOfSquares = Options.MaxGradNorm > 0 ? GradSumOfSquares : null;
            if (_lowWords is not null)
                backend.AdamWSplit(_flatValues.Narrow(offset, shape), _lowWords.Narrow(offset, shape), _flatGrads.Narrow(offset, shape),
                    M.Narrow(offset, shape), V.Narrow(offset, shape), step, sumOfSquares);
            else
                backend.AdamW(_flatValues.Narrow(offset, shape), _flatGrads.Narrow(offset, shape),
                    M.Narrow(offset, shape), V.Narrow(offset, shape), step, sumOfSquares, _lowPrecisionValues?.Narrow(offset, shape));
        }
    }

    /// <summary>The gradient norm of the last step (reads the device: call only when logging).</summary>
    public double LastGradNorm() => Math.Sqrt(_arena.Backend.ReadScalar(GradSumOfSquares));
}
