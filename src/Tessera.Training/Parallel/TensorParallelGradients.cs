using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Training.Parallel;

/// <summary>
/// Sums the gradients that each tensor-parallel rank computes only in part (<see cref="LayerFactory.PartialGradients"/>:
/// sequence-parallel norms, key/value heads replicated over blocks of ranks; <see cref="LayerFactory.AdapterPartialGradients"/>:
/// LoRA's replicated factors, A over column-parallel and B over row-parallel layers) over their groups, unit by unit as the
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
        // The model's own partial gradients (a frozen base has none to sum), and the LoRA adapters': their layout's units are named
        // after the model's units they sit in ("blocks.3"), so an adapter's partial is summed once that model unit's backward is done.
        var own = model.Layers.PartialGradients.Where(g => g.Parameter.RequiresGradient).ToArray();
        var adapters = model.Layers.AdapterPartialGradients;
        var adapterUnits = model.Adapters?.Layout.Units;
        _byUnit = model.Layout.Units.Select(u => own.Where(g => g.Parameter.Unit == u.Index)
            .Concat(adapters.Where(g => adapterUnits![g.Parameter.Unit].Name == u.Name)).ToArray()).ToArray();
        Count = _byUnit.Sum(u => u.Length);
        if (Count != own.Length + adapters.Count)
            throw new InvalidOperationException("tensor parallelism: an adapter with a partial gradient sits in a unit the model does not have");
        model.PassHooks = this;
    }

    /// <summary>Whether <paramref name="model"/> has gradients a trainer must sum over tensor-parallel groups (its trained parameters' or its adapters').</summary>
    public static bool Needed(Transformer model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model.Layers.AdapterPartialGradients.Count > 0 || model.Layers.PartialGradients.Any(g => g.Parameter.RequiresGradient);
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
