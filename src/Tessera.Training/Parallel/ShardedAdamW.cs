using Tessera.Distributed;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Optim;

namespace Tessera.Training.Parallel;

/// <summary>
/// AdamW over the arena ranges a rank owns (<see cref="ShardLayout.Owned"/>): moments exist only for
/// the rank's shard (all of the arena for plain data parallelism), the global gradient norm is the
/// all-reduced sum of every rank's shard sum of squares, and each owned range is one fused AdamW call.
/// With offload the fp32 masters, the moments and a gradient copy of the shard live on a host backend
/// and the update runs there; the updated values are copied back into the device arena.
/// </summary>
public sealed class ShardedAdamW
{
    private readonly ParameterArena _arena;
    private readonly ShardLayout _layout;
    private readonly ProcessGroup _group;
    private readonly Func<OwnedRange, Tensor> _gradient;
    private readonly Tensor _sumOfSquares;         // (1) on the device
    private readonly Tensor? _hostGrads;           // (ShardLength) offload only
    private readonly Tensor? _hostSumOfSquares;    // (1) offload only
    private double[] _stagingF64 = [];
    private float[] _stagingF32 = [];

    /// <summary>
    /// Creates zeroed moments for the ranges <paramref name="layout"/> gives this rank. <paramref name="gradient"/>
    /// returns the reduced gradient of an owned range (a view of the arena or of the gradient shard).
    /// <paramref name="host"/> (offload) holds the masters and moments; null keeps them on the arena's backend.
    /// </summary>
    public ShardedAdamW(ParameterArena arena, ShardLayout layout, ProcessGroup group, AdamWOptions options,
        Func<OwnedRange, Tensor> gradient, IBackend? host)
    {
        if (!arena.IsBuilt) throw new InvalidOperationException("build the parameter arena before creating its optimizer");
        _arena = arena;
        _layout = layout;
        _group = group;
        _gradient = gradient;
        Options = options;
        Host = host;
        var stateBackend = host ?? arena.Backend;
        var shape = new Shape(checked((int)Math.Max(layout.ShardLength / ParameterArena.Alignment, 1)), ParameterArena.Alignment);
        M = stateBackend.Zeros(shape, arena.DType);
        V = stateBackend.Zeros(shape, arena.DType);
        _sumOfSquares = arena.Backend.Zeros(new Shape(1), arena.DType);
        if (host is not null)
        {
            Masters = host.Zeros(shape, arena.DType);
            _hostGrads = host.Zeros(shape, arena.DType);
            _hostSumOfSquares = host.Zeros(new Shape(1), arena.DType);
            LoadMastersFromArena();
        }
    }

    /// <summary>Fixed hyper-parameters.</summary>
    public AdamWOptions Options { get; }

    /// <summary>The host backend of the offloaded state, or null.</summary>
    public IBackend? Host { get; }

    /// <summary>First moments of the shard (ShardLength / Alignment, Alignment), laid out like the shard buffers.</summary>
    public Tensor M { get; }

    /// <summary>Second moments of the shard, laid out like <see cref="M"/>.</summary>
    public Tensor V { get; }

    /// <summary>Offload only: the master values of the shard on the host; null otherwise (the arena holds them).</summary>
    public Tensor? Masters { get; }

    /// <summary>Number of updates taken; the next update uses StepCount + 1 for bias correction.</summary>
    public long StepCount { get; set; }

    /// <summary>Collectives issued by the last <see cref="Step"/> (the norm all-reduce when sharded).</summary>
    public int CollectivesPerStep => _layout.Shards > 1 ? 1 : 0;

    /// <summary>
    /// Updates the owned ranges with learning rate <paramref name="learningRate"/>. The gradients must be
    /// reduced (and waited for). Sharded: one all-reduce of the gradient sum of squares.
    /// </summary>
    public void Step(double learningRate)
    {
        var backend = _arena.Backend;
        backend.Fill(_sumOfSquares, 0);
        if (_layout.Shards == 1)
        {
            // Plain data parallelism: every rank holds the whole reduced gradient; one sum over the arena, as the one-rank optimizer does.
            backend.SumOfSquares(_arena.Grads, _sumOfSquares);
        }
        else
        {
            foreach (var r in _layout.Owned) backend.SumOfSquares(_gradient(r), _sumOfSquares);
            _group.AllReduce(_sumOfSquares).Wait();
        }
        StepCount++;
        if (Host is null)
        {
            foreach (var r in _layout.Owned)
            {
                var shape = new Shape((int)r.Length);
                backend.AdamW(_arena.Values.Narrow(r.ArenaOffset, shape), _gradient(r), M.Narrow(r.ShardOffset, shape), V.Narrow(r.ShardOffset, shape),
                    StepFor(learningRate, r), Options.MaxGradNorm > 0 ? _sumOfSquares : null);
            }
            return;
        }
        // Offload: gradients device -> host, update on the host, values host -> device.
        CopyAcross(_sumOfSquares, _arena.Backend, _hostSumOfSquares!, Host);
        foreach (var r in _layout.Owned)
        {
            var shape = new Shape((int)r.Length);
            CopyAcross(_gradient(r), backend, _hostGrads!.Narrow(r.ShardOffset, shape), Host);
        }
        foreach (var r in _layout.Owned)
        {
            var shape = new Shape((int)r.Length);
            Host.AdamW(Masters!.Narrow(r.ShardOffset, shape), _hostGrads!.Narrow(r.ShardOffset, shape), M.Narrow(r.ShardOffset, shape),
                V.Narrow(r.ShardOffset, shape), StepFor(learningRate, r), Options.MaxGradNorm > 0 ? _hostSumOfSquares : null);
        }
        foreach (var r in _layout.Owned)
        {
            var shape = new Shape((int)r.Length);
            CopyAcross(Masters!.Narrow(r.ShardOffset, shape), Host, _arena.Values.Narrow(r.ArenaOffset, shape), backend);
        }
    }

    /// <summary>The global gradient norm of the last step (reads the device: call only when logging).</summary>
    public double LastGradNorm() => Math.Sqrt(_arena.Backend.ReadScalar(_sumOfSquares));

    /// <summary>Offload: copies the owned values of the arena into the host masters (after loading weights).</summary>
    public void LoadMastersFromArena()
    {
        if (Host is null) return;
        foreach (var r in _layout.Owned)
        {
            var shape = new Shape((int)r.Length);
            CopyAcross(_arena.Values.Narrow(r.ArenaOffset, shape), _arena.Backend, Masters!.Narrow(r.ShardOffset, shape), Host);
        }
    }

    private AdamWStep StepFor(double learningRate, OwnedRange r) =>
        new(learningRate, Options.Beta1, Options.Beta2, Options.Epsilon, r.WeightDecay ? Options.WeightDecay : 0.0, StepCount, Options.MaxGradNorm);

    private void CopyAcross(Tensor source, IBackend from, Tensor destination, IBackend to)
    {
        int n = checked((int)source.NumElements);
        if (source.DType == DType.F64)
        {
            if (_stagingF64.Length < n) _stagingF64 = new double[n];
            from.CopyToHost<double>(source, _stagingF64.AsSpan(0, n));
            to.CopyFromHost<double>(_stagingF64.AsSpan(0, n), destination);
        }
        else
        {
            if (_stagingF32.Length < n) _stagingF32 = new float[n];
            from.CopyToHost<float>(source, _stagingF32.AsSpan(0, n));
            to.CopyFromHost<float>(_stagingF32.AsSpan(0, n), destination);
        }
    }
}
