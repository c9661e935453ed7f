using System.Globalization;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Where pipeline parallelism cuts a model: its <see cref="Layers"/> blocks dealt in order to <see cref="Stages"/> x
/// <see cref="Chunks"/> virtual stages, each a contiguous range of at least one block; the embeddings go with virtual stage 0,
/// the final norm, LM head and loss with the last. Virtual stage s lives on pipeline rank s mod p as its model chunk s / p
/// (Megatron's interleaving: rank r holds chunks r, r + p, r + 2p, ...), so consecutive virtual stages are always on
/// neighbouring ranks and the activations travel round the ring of ranks v times. With one chunk per rank this is the plain
/// pipeline of GPipe and 1F1B. The partition is the pipeline axis of the parallel plan: the model asks it which units it builds.
/// </summary>
public sealed class PipelinePartition
{
    private readonly int[] _starts;   // (p v + 1) block boundaries: virtual stage s holds blocks [_starts[s], _starts[s + 1])

    /// <summary>
    /// A partition with <paramref name="blocksPerVirtualStage"/>[s] blocks on virtual stage s (p x v entries, each at least one)
    /// over <paramref name="stages"/> pipeline ranks; v is the count divided by <paramref name="stages"/>.
    /// </summary>
    public PipelinePartition(int stages, IReadOnlyList<int> blocksPerVirtualStage)
    {
        ArgumentNullException.ThrowIfNull(blocksPerVirtualStage);
        if (stages < 1) throw new ArgumentException($"pipeline partition: pp ({stages}) must be at least 1");
        if (blocksPerVirtualStage.Count == 0 || blocksPerVirtualStage.Count % stages != 0)
            throw new ArgumentException($"pipeline partition: {blocksPerVirtualStage.Count} block counts do not give each of the pp ({stages}) stages the same number of virtual stages");
        Stages = stages;
        Chunks = blocksPerVirtualStage.Count / stages;
        _starts = new int[blocksPerVirtualStage.Count + 1];
        for (int s = 0; s < blocksPerVirtualStage.Count; s++)
        {
            if (blocksPerVirtualStage[s] < 1)
                throw new ArgumentException($"pipeline partition: virtual stage {s} is given {blocksPerVirtualStage[s]} blocks; every virtual stage needs at least one");
            _starts[s + 1] = checked(_starts[s] + blocksPerVirtualStage[s]);
        }
        Layers = _starts[^1];
    }

    /// <summary>
    /// <paramref name="layers"/> blocks over <paramref name="stages"/> ranks of <paramref name="chunks"/> virtual stages each, as
    /// evenly as the counts allow; when they do not divide, the extra blocks go to the middle virtual stages first (the first and
    /// last also carry the vocabulary layers).
    /// </summary>
    public static PipelinePartition Even(int layers, int stages, int chunks = 1) => Balanced(layers, stages, chunks, PipelineUnitCosts.BlocksOnly);

    /// <summary>
    /// <paramref name="layers"/> blocks over <paramref name="stages"/> x <paramref name="chunks"/> virtual stages so that the
    /// costliest virtual stage (its blocks, plus the embeddings on the first and the head on the last) costs as little as
    /// possible under <paramref name="costs"/> (measured per-unit times). Blocks cost the same, so giving each block in turn to
    /// the cheapest virtual stage so far is optimal (identical jobs on machines with different initial loads); ties go to middle
    /// virtual stages first, then the last, then the first.
    /// </summary>
    public static PipelinePartition Balanced(int layers, int stages, int chunks, PipelineUnitCosts costs)
    {
        ArgumentNullException.ThrowIfNull(costs);
        costs.Validate();
        if (stages < 1) throw new ArgumentException($"pipeline: pp ({stages}) must be at least 1");
        if (chunks < 1) throw new ArgumentException($"pipeline: virtual stages per rank ({chunks}) must be at least 1");
        int count = checked(stages * chunks);
        if (layers < count)
            throw new ArgumentException(chunks == 1
                ? $"pipeline: pp ({stages}) stages need at least one block each, but the model has {layers} blocks (Layers); use pp <= {layers}"
                : $"pipeline: pp ({stages}) x virtual stages ({chunks}) = {count} virtual stages need at least one block each, but the model has {layers} blocks (Layers)");
        var blocks = new int[count];
        var cost = new double[count];
        for (int s = 0; s < count; s++)
        {
            blocks[s] = 1;
            cost[s] = costs.Block + (s == 0 ? costs.Embedding : 0) + (s == count - 1 ? costs.Head : 0);
        }
        var preference = Enumerable.Range(1, Math.Max(0, count - 2)).Append(count - 1).Append(0).Distinct().ToArray();
        for (int extra = count; extra < layers; extra++)
        {
            int best = preference[0];
            foreach (int s in preference)
                if (cost[s] < cost[best]) best = s;
            blocks[best]++;
            cost[best] += costs.Block;
        }
        return new PipelinePartition(stages, blocks);
    }

    /// <summary>Pipeline ranks p.</summary>
    public int Stages { get; }

    /// <summary>Model chunks (virtual stages) per rank, v: 1 for GPipe and 1F1B, more for interleaved 1F1B.</summary>
    public int Chunks { get; }

    /// <summary>Virtual stages over all ranks, p x v.</summary>
    public int VirtualStageCount => _starts.Length - 1;

    /// <summary>Blocks of the model, L.</summary>
    public int Layers { get; }

    /// <summary>The blocks [First, First + Count) of virtual stage <paramref name="virtualStage"/>.</summary>
    public (int First, int Count) BlocksOf(int virtualStage)
    {
        CheckVirtualStage(virtualStage);
        return (_starts[virtualStage], _starts[virtualStage + 1] - _starts[virtualStage]);
    }

    /// <summary>The pipeline rank that runs <paramref name="virtualStage"/>.</summary>
    public int StageOf(int virtualStage)
    {
        CheckVirtualStage(virtualStage);
        return virtualStage % Stages;
    }

    /// <summary>Which of its rank's chunks <paramref name="virtualStage"/> is.</summary>
    public int ChunkOf(int virtualStage)
    {
        CheckVirtualStage(virtualStage);
        return virtualStage / Stages;
    }

    /// <summary>The virtual stage of chunk <paramref name="chunk"/> on pipeline rank <paramref name="stage"/>.</summary>
    public int VirtualStage(int stage, int chunk)
    {
        if (stage < 0 || stage >= Stages) throw new ArgumentOutOfRangeException(nameof(stage), $"pipeline stage {stage} is outside [0, {Stages})");
        if (chunk < 0 || chunk >= Chunks) throw new ArgumentOutOfRangeException(nameof(chunk), $"model chunk {chunk} is outside [0, {Chunks})");
        return chunk * Stages + stage;
    }

    /// <summary>Whether <paramref name="virtualStage"/> starts with the embeddings (the first).</summary>
    public bool HasEmbeddings(int virtualStage) => virtualStage == 0;

    /// <summary>Whether <paramref name="virtualStage"/> ends with the final norm, head and loss (the last).</summary>
    public bool HasHead(int virtualStage) => virtualStage == VirtualStageCount - 1;

    /// <summary>The cost of each virtual stage under <paramref name="costs"/>.</summary>
    public double[] CostsOf(PipelineUnitCosts costs)
    {
        ArgumentNullException.ThrowIfNull(costs);
        return Enumerable.Range(0, VirtualStageCount).Select(s =>
            BlocksOf(s).Count * costs.Block + (HasEmbeddings(s) ? costs.Embedding : 0) + (HasHead(s) ? costs.Head : 0)).ToArray();
    }

    /// <summary>"pp 4 x v 2: blocks 0-1 | 2-3 | ..." (the virtual stages in order).</summary>
    public override string ToString() =>
        $"pp {Stages}{(Chunks > 1 ? $" x v {Chunks}" : "")}: blocks " + string.Join(" | ", Enumerable.Range(0, VirtualStageCount).Select(s =>
        {
            var (first, count) = BlocksOf(s);
            return count == 1 ? first.ToString(CultureInfo.InvariantCulture) : string.Create(CultureInfo.InvariantCulture, $"{first}-{first + count - 1}");
        }));

    private void CheckVirtualStage(int virtualStage)
    {
        if (virtualStage < 0 || virtualStage >= VirtualStageCount)
            throw new ArgumentOutOfRangeException(nameof(virtualStage), $"virtual stage {virtualStage} is outside [0, {VirtualStageCount})");
    }
}
