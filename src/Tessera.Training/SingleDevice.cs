using Tessera.Distributed;
using Tessera.Nn;
using Tessera.Training.Optim;

namespace Tessera.Training;

/// <summary>
/// The strategy of one device (or of each tensor-parallel rank with no data parallelism): no gradient communication,
/// the whole arena updated by one <see cref="AdamWOptimizer"/>.
/// </summary>
public sealed class SingleDevice : IDataParallelism
{
    private readonly ParameterArena _arena;

    /// <summary>Updates <paramref name="arena"/> with <paramref name="optimizer"/> (which must be over the same arena).</summary>
    public SingleDevice(ParameterArena arena, AdamWOptimizer optimizer)
    {
        ArgumentNullException.ThrowIfNull(arena);
        ArgumentNullException.ThrowIfNull(optimizer);
        if (!ReferenceEquals(optimizer.Arena, arena))
            throw new ArgumentException("single device: the optimizer updates another parameter arena than the model's");
        _arena = arena;
        Optimizer = optimizer;
    }

    /// <summary>
    /// The strategy of <paramref name="model"/>'s arena (a LoRA model's adapters' arena over its frozen base) with a new optimizer of <paramref name="options"/> (its gradient
    /// norm summed over the tensor-parallel group when the model is split).
    /// </summary>
    public static SingleDevice For(Models.Transformer model, AdamWOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        // A LoRA model over a frozen base trains its adapters' arena: on a tensor-parallel rank its share of the adapters,
        // whose norm counts each global element once over the tp group.
        if (!ReferenceEquals(model.TrainableLayout, model.Layout))
            return new SingleDevice(model.Adapters!.Arena, new AdamWOptimizer(model.Adapters.Arena, options, GradientNormScope.For(model, model.Adapters.Layout)));
        return new SingleDevice(model.Parameters, new AdamWOptimizer(model.Parameters, options, GradientNormScope.For(model)));
    }

    /// <summary>The optimizer (its moments are part of a checkpoint).</summary>
    public AdamWOptimizer Optimizer { get; }

    /// <inheritdoc/>
    public ProcessGroup? Group => null;

    /// <inheritdoc/>
    public long StepCount { get => Optimizer.StepCount; set => Optimizer.StepCount = value; }

    /// <inheritdoc/>
    public bool WeightsPending => false;

    /// <inheritdoc/>
    public bool ReducesEveryMicroBatch => false;

    /// <inheritdoc/>
    public void ZeroGrad() => _arena.ZeroGrad();

    /// <inheritdoc/>
    public void BeginMicroBatch(bool first, bool last) { }

    /// <inheritdoc/>
    public void FinishGradients() { }

    /// <inheritdoc/>
    public void Step(double learningRate) => Optimizer.Step(learningRate);

    /// <inheritdoc/>
    public void AfterUpdate() { }

    /// <inheritdoc/>
    public void ReleaseAll() { }

    /// <inheritdoc/>
    public double LastGradNorm() => Optimizer.LastGradNorm();

    /// <inheritdoc/>
    public int CollectivesPerStep(int accumulationSteps) => 0;

    /// <inheritdoc/>
    public void WriteWeights(Parameter parameter, ReadOnlySpan<double> values)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        if (values.Length != parameter.NumElements)
            throw new ArgumentException($"{values.Length} values for parameter '{parameter.Name}' of {parameter.NumElements} elements");
        // The F32 master under mixed precision (split or separate), and the BF16 value from it.
        var host = values.ToArray();
        parameter.WriteMasterOrValue(target => HostValues.Write(_arena.Backend, host, target));
    }

    /// <inheritdoc/>
    public void MarkWeightsWritten() { }
}
