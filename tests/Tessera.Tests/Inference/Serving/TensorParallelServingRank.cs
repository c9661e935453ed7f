using Tessera.Distributed;
using Tessera.Distributed.Mesh;
using Tessera.Inference.Paging;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Tests.Inference.Serving;

/// <summary>One thread rank of a tensor-parallel serving test, on the CPU or a GPU: its part of the model, then rank 0's engine or another rank's loop.</summary>
internal static class TensorParallelServingRank
{
    /// <summary>
    /// Builds rank <paramref name="rank"/>'s part of a <paramref name="config"/> model (seed 3) over the tensor-parallel group
    /// of <paramref name="factory"/>'s world; rank 0 returns what <paramref name="serve"/> makes of its engine (with the
    /// whole <paramref name="draft"/> model it builds on rank 0's backend, if any), the other ranks follow it and return null.
    /// <paramref name="finished"/>, if given, sees the rank's tensor-parallel group once the engine is disposed (rank 0) or the
    /// loop has ended (the others), e.g. to count its collectives.
    /// </summary>
    public static T? Run<T>(int rank, int tp, IBackend backend, IProcessGroupFactory factory, TransformerConfig config, DType dtype,
        EngineOptions options, Func<InferenceEngine, T> serve, Func<IBackend, Transformer>? draft = null, Action<ProcessGroup>? finished = null)
        where T : class
    {
        using var groups = new DeviceMesh(tp: tp).CreateGroups(factory);
        var model = new Transformer(config, backend, dtype,
            tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), factory));
        model.InitializeWeights(seed: 3);
        T? result = null;
        if (rank > 0) InferenceEngine.Follow(model, options);
        else
            using (var engine = new InferenceEngine(model, new ByteTokenizer(), options, draft?.Invoke(backend)))
                result = serve(engine);
        finished?.Invoke(groups.Tp);
        return result;
    }
}
