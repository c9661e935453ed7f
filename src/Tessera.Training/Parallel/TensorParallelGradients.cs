using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Training.Parallel;

/// <summary>
/// Sums the gradients that each tensor-parallel rank computes only in part (<see cref="LayerFactory.PartialGradients"/>:
/// sequence-parallel norms, key/value heads replicated over blocks of ranks) over their groups, unit by unit as the
/// backward pass finishes them, before the data-parallel strategy's own hook reduces the unit: a pass-hook decorator around
/// it. It reduces on the micro-batch the strategy reduces on (every one for ZeRO-3, else the last of the step, the
/// accumulated gradient), so each contribution is summed once.
/// </summary>
public sealed class TensorParallelGradients : ITransformerPassHooks
{
    private readonly ITransformerPassHooks? _inner;
    private readonly PartialGradient[][] _byUnit;
    private readonly bool _everyMicroBatch;
    private bool _reduceNow = true;

    /// <summary>Wraps <paramref name="model"/>'s current pass hooks (the data-parallel strategy's, or none) and installs itself.</summary>
    public TensorParallelGradients(Transformer model, bool everyMicroBatch)
    {
        ArgumentNullException.ThrowIfNull(model);
        _inner = model.PassHooks;
        _everyMicroBatch = everyMicroBatch;
        var units = model.Layout.Units.Count;
        _byUnit = Enumerable.Range(0, units).Select(u => model.Layers.PartialGradients.Where(g => g.Parameter.Unit == u).ToArray()).ToArray();
        Count = model.Layers.PartialGradients.Count;
        model.PassHooks = this;
    }

    /// <summary>Partial gradients summed per reducing micro-batch (one all-reduce each).</summary>
    public int Count { get; }

    /// <summary>Marks the next micro-batch as the first and/or last of its step.</summary>
    public void BeginMicroBatch(bool first, bool last) => _reduceNow = _everyMicroBatch || last;

    /// <inheritdoc/>
    public void BeforeForward(int segment) => _inner?.BeforeForward(segment);

    /// <inheritdoc/>
    public void AfterForward(int segment) => _inner?.AfterForward(segment);

    /// <inheritdoc/>
    public void BeforeBackward(int segment) => _inner?.BeforeBackward(segment);

    /// <inheritdoc/>
    public void AfterBackward(int segment)
    {
        if (_reduceNow)
        {
            foreach (var g in _byUnit[segment])
            {
                var flat = g.Parameter.Grad.Reshape(checked((int)g.Parameter.NumElements));
                g.Group.AllReduce(flat.Narrow(g.Start, new Shape(checked((int)g.Length))), ReduceOp.Sum).WaitOnDevice();
            }
        }
        _inner?.AfterBackward(segment);
    }
}
