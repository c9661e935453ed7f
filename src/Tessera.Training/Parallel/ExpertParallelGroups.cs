using Tessera.Distributed;

namespace Tessera.Training.Parallel;

/// <summary>
/// The two groups expert parallelism adds inside a data-parallel group of dp ranks (Megatron-Core's expert-model-parallel and
/// expert-data-parallel groups): dp rank r is expert-parallel rank r mod ep of the ep consecutive dp ranks [ep ⌊r/ep⌋, + ep)
/// (the "ep" group: they hold different experts and exchange tokens), and the dp / ep ranks with the same r mod ep hold the same
/// experts (the "edp" group: their expert gradients are summed). Everything else is replicated over the whole dp group.
/// </summary>
public sealed class ExpertParallelGroups : IDisposable
{
    private ExpertParallelGroups(ProcessGroup expert, ProcessGroup expertData)
    {
        Expert = expert;
        ExpertData = expertData;
    }

    /// <summary>The expert-parallel group "ep" (ep ranks; token exchange).</summary>
    public ProcessGroup Expert { get; }

    /// <summary>The expert-data-parallel group "edp" (dp / ep ranks holding the same experts; their gradients' sum).</summary>
    public ProcessGroup ExpertData { get; }

    /// <summary>
    /// The caller's groups for <paramref name="ep"/> expert-parallel ranks inside <paramref name="dataParallel"/>, created through
    /// <paramref name="factory"/> (every rank of the world calls this at the same point: "ep" first, then "edp"). ep must divide dp.
    /// </summary>
    public static ExpertParallelGroups Create(ProcessGroup dataParallel, int ep, IProcessGroupFactory factory)
    {
        ArgumentNullException.ThrowIfNull(dataParallel);
        ArgumentNullException.ThrowIfNull(factory);
        int dp = dataParallel.Size, r = dataParallel.Rank;
        if (ep < 1 || dp % ep != 0)
            throw new ArgumentException($"expert parallelism: ep ({ep}) must be at least 1 and divide the data-parallel ranks (dp {dp}); the ep ranks of one group are data-parallel replicas of everything but the experts");
        var global = dataParallel.GlobalRanks;
        int first = r / ep * ep;
        var expert = factory.CreateGroup("ep", Enumerable.Range(first, ep).Select(i => global[i]).ToArray());
        var expertData = factory.CreateGroup("edp", Enumerable.Range(0, dp / ep).Select(i => global[i * ep + r % ep]).ToArray());
        return new ExpertParallelGroups(expert, expertData);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Expert.Dispose();
        ExpertData.Dispose();
    }
}
