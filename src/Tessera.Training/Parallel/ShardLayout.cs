using Tessera.Nn;

namespace Tessera.Training.Parallel;

/// <summary>
/// How a model's parameter arena is cut into communication units and which parts a rank owns.
/// Stages 0-2: gradient buckets of whole parameters, built from the last parameter backwards (the
/// backward pass finishes the last blocks first), each closed once it reaches the bucket size.
/// Stage 3: one unit per model unit (<see cref="ParameterLayout.Units"/>: embeddings, each block, final norm + head). In the sharded
/// stages every unit is split evenly over the ranks (Megatron's distributed optimizer shards each
/// bucket the same way), so a reduce-scatter or all-gather of a unit is one collective.
/// </summary>
public sealed class ShardLayout
{
    private readonly List<ShardUnit> _units = [];
    private readonly List<OwnedRange> _owned = [];

    /// <summary>
    /// Lays out <paramref name="parameters"/> (the rank's local layout: its tensor-parallel shards, when any) for rank
    /// <paramref name="rank"/> of <paramref name="worldSize"/> data-parallel ranks.
    /// </summary>
    public ShardLayout(ParameterLayout parameters, ZeroStage stage, int worldSize, int rank, long bucketElements)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (worldSize < 1 || rank < 0 || rank >= worldSize)
            throw new ArgumentOutOfRangeException(nameof(rank), $"shard layout: rank {rank} is outside a world of {worldSize}");
        if (bucketElements <= 0) throw new ArgumentOutOfRangeException(nameof(bucketElements), $"shard layout: bucket size {bucketElements} must be positive");
        var arena = parameters;
        Stage = stage;
        Shards = stage == ZeroStage.None ? 1 : worldSize;
        ShardIndex = stage == ZeroStage.None ? 0 : rank;
        Segments = parameters.Units.Count;
        var ps = arena.Parameters;
        foreach (var unit in parameters.Units)
            if (unit.ParameterCount == 0 || unit.Length == 0)
                throw new InvalidOperationException($"shard layout: model unit {unit.Index} ('{unit.Name}') has no parameters");
        SegmentStart = parameters.Units.Select(u => u.Start).ToArray();
        SegmentEnd = parameters.Units.Select(u => u.End).ToArray();

        // Units: (start, end) arena ranges in issue order.
        var ranges = new List<(long Start, long End)>();
        if (stage == ZeroStage.Parameters)
        {
            for (int s = 0; s < Segments; s++) ranges.Add((SegmentStart[s], SegmentEnd[s]));
        }
        else
        {
            long end = arena.Length;
            for (int i = ps.Count - 1; i >= 0; i--)
            {
                if (end - ps[i].Offset >= bucketElements || i == 0)
                {
                    ranges.Add((ps[i].Offset, end));
                    end = ps[i].Offset;
                }
            }
        }
        long shardStart = 0;
        foreach (var (start, end) in ranges)
        {
            long length = end - start;
            long unitAlign = (long)ParameterLayout.Alignment * Shards;
            long chunk = Shards == 1 ? length : (length + unitAlign - 1) / unitAlign * ParameterLayout.Alignment;
            var unit = new ShardUnit(_units.Count, start, length, chunk, shardStart);
            _units.Add(unit);
            shardStart += chunk;
            AddOwned(unit, arena);
        }
        ShardLength = shardStart;
    }

    /// <summary>The ZeRO stage this layout serves.</summary>
    public ZeroStage Stage { get; }

    /// <summary>Ranks each unit is split over (1 for plain data parallelism).</summary>
    public int Shards { get; }

    /// <summary>This rank's chunk index in every unit.</summary>
    public int ShardIndex { get; }

    /// <summary>Model segments: embeddings, one per block, final norm + head.</summary>
    public int Segments { get; }

    /// <summary>First arena element of each segment.</summary>
    public long[] SegmentStart { get; }

    /// <summary>One past the last arena element of each segment.</summary>
    public long[] SegmentEnd { get; }

    /// <summary>Communication units in issue order.</summary>
    public IReadOnlyList<ShardUnit> Units => _units;

    /// <summary>Arena ranges this rank updates, each with one decay setting, in unit order.</summary>
    public IReadOnlyList<OwnedRange> Owned => _owned;

    /// <summary>Elements of this rank's shard buffers (sum of the units' chunks).</summary>
    public long ShardLength { get; }

    /// <summary>Arena range [start, end) of this rank's chunk of <paramref name="unit"/> (empty when it lies in the padding).</summary>
    public (long Start, long End) OwnedSpan(ShardUnit unit)
    {
        long start = Math.Min(unit.Start + ShardIndex * unit.Chunk, unit.End);
        long end = Math.Min(start + unit.Chunk, unit.End);
        return (start, end);
    }

    private void AddOwned(ShardUnit unit, ParameterLayout arena)
    {
        var (start, end) = OwnedSpan(unit);
        const long maxRun = 1L << 30;   // AdamW ranges are int-sized tensors
        var ps = arena.Parameters;
        for (int i = 0; i < ps.Count && start < end; i++)
        {
            long pStart = ps[i].Offset, pEnd = i + 1 < ps.Count ? ps[i + 1].Offset : arena.Length;
            long lo = Math.Max(pStart, start), hi = Math.Min(pEnd, end);
            while (lo < hi)
            {
                long take = Math.Min(hi - lo, maxRun);
                if (_owned.Count > 0)
                {
                    var last = _owned[^1];
                    if (last.Unit == unit.Index && last.WeightDecay == ps[i].WeightDecay && last.ArenaOffset + last.Length == lo && last.Length + take <= maxRun)
                    {
                        _owned[^1] = last with { Length = last.Length + take };
                        lo += take;
                        continue;
                    }
                }
                _owned.Add(new OwnedRange(unit.Index, lo, take, unit.ShardStart + (lo - (unit.Start + ShardIndex * unit.Chunk)), ps[i].WeightDecay));
                lo += take;
            }
        }
    }
}
