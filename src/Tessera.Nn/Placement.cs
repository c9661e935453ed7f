using System.Globalization;
using Tessera.Distributed.Mesh;
using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// How a parameter's global tensor is laid out over the ranks of one mesh axis (DTensor's placements): replicated (every
/// rank holds all of it), or sharded along one tensor dimension over an axis, dealt in <see cref="ShardPart"/>s. A plain
/// shard is one part whose units are single elements; a fused QKV weight is three parts (query, key and value heads) so
/// that each rank's rows are its query heads, then its key heads, then its value heads, contiguous. Checkpoints, gradient
/// clipping, initialization and Hugging Face loading read the placement; they never special-case a layer.
/// <para>
/// A replicated parameter may have a partial gradient (<see cref="PartialGradientAxis"/>): its value is the same on every
/// rank of the axis, but each rank's gradient covers only the rows it saw (Megatron's sequence-parallel norms), so the
/// gradients are summed over the axis once per step. Key/value heads replicated under a tensor-parallel group wider than
/// their count are the sharded counterpart: their replicas' gradients are summed over each replica block.
/// </para>
/// </summary>
public sealed class Placement : IEquatable<Placement>
{
    private readonly ShardPart[] _parts;

    private Placement(MeshAxis? axis, int dim, ShardPart[] parts, MeshAxis? partialGradient)
    {
        Axis = axis;
        Dim = dim;
        _parts = parts;
        PartialGradientAxis = partialGradient;
    }

    /// <summary>Every rank holds the whole tensor, and computes the whole gradient.</summary>
    public static Placement Replicated { get; } = new(null, 0, [], null);

    /// <summary>Every rank holds the whole tensor, but its gradient is partial: summed over <paramref name="axis"/> once per step.</summary>
    public static Placement ReplicatedWithPartialGradient(MeshAxis axis) => new(null, 0, [], axis);

    /// <summary>
    /// Sharded along tensor dimension <paramref name="dim"/> over mesh axis <paramref name="axis"/>: in the given
    /// <paramref name="parts"/> (which must cover the dimension), or, with none, as one part of single elements.
    /// </summary>
    public static Placement Shard(MeshAxis axis, int dim, params ShardPart[] parts)
    {
        if (dim < 0) throw new ArgumentOutOfRangeException(nameof(dim), $"placement: dimension {dim} must not be negative");
        foreach (var p in parts)
            if (p.Units <= 0 || p.UnitSize <= 0) throw new ArgumentException($"placement: shard part {p} must have positive units and unit size");
        return new Placement(axis, dim, [.. parts], null);
    }

    /// <summary>The mesh axis the tensor is sharded over; null when replicated.</summary>
    public MeshAxis? Axis { get; }

    /// <summary>The sharded tensor dimension (0 for rows of a matrix, 1 for columns); 0 when replicated.</summary>
    public int Dim { get; }

    /// <summary>The parts of the sharded dimension; empty for a plain shard (one part of single elements) or when replicated.</summary>
    public IReadOnlyList<ShardPart> Parts => _parts;

    /// <summary>The axis over which a replicated parameter's gradient is partial (summed once per step), or null.</summary>
    public MeshAxis? PartialGradientAxis { get; }

    /// <summary>Whether every rank holds the whole tensor.</summary>
    public bool IsReplicated => Axis is null;

    /// <summary>The parts of the sharded dimension of extent <paramref name="extent"/>: <see cref="Parts"/>, or one part of single elements.</summary>
    public IReadOnlyList<ShardPart> PartsOf(int extent) => _parts.Length > 0 ? _parts : [new ShardPart(extent, 1)];

    /// <summary>
    /// Checks that <paramref name="global"/> can be laid out over <paramref name="ranks"/> ranks; the message names
    /// <paramref name="name"/>, the dimension, the part and the numbers.
    /// </summary>
    public void Validate(string name, Shape global, int ranks)
    {
        if (IsReplicated || ranks == 1 && _parts.Length == 0) return;
        if (Dim >= global.Rank) throw new ArgumentException($"parameter '{name}' {global}: placement {this} shards dimension {Dim}, which it does not have");
        var parts = PartsOf(global[Dim]);
        long covered = parts.Sum(p => (long)p.Extent);
        if (covered != global[Dim])
            throw new ArgumentException($"parameter '{name}' {global}: the parts of placement {this} cover {covered} elements of dimension {Dim}, which has {global[Dim]}");
        for (int i = 0; i < parts.Count; i++)
            if (!parts[i].Divides(ranks))
                throw new ArgumentException(parts.Count == 1
                    ? $"parameter '{name}' {global}: {Axis!.Value.ToString().ToLowerInvariant()} ({ranks}) must divide dimension {Dim} ({global[Dim]})"
                    : $"parameter '{name}' {global}: part {i} of dimension {Dim} has {parts[i].Units} units of {parts[i].UnitSize}; " +
                      $"{Axis!.Value.ToString().ToLowerInvariant()} ({ranks}) must divide the units or be a multiple of them");
    }

    /// <summary>The shape rank <paramref name="index"/> of <paramref name="ranks"/> holds.</summary>
    public Shape LocalShape(Shape global, int index, int ranks)
    {
        if (IsReplicated || ranks == 1) return global;
        var dims = global.ToArray();
        dims[Dim] = PartsOf(global[Dim]).Sum(p => p.LocalUnits(ranks) * p.UnitSize);
        return new Shape(dims);
    }

    /// <summary>
    /// The runs of the sharded dimension that rank <paramref name="index"/> of <paramref name="ranks"/> holds, as
    /// (global start, length) in local order (the local tensor is their concatenation along <see cref="Dim"/>). The whole
    /// dimension for a replicated placement.
    /// </summary>
    public IReadOnlyList<(int Start, int Length)> LocalRanges(int extent, int index, int ranks)
    {
        if (IsReplicated || ranks == 1) return [(0, extent)];
        var runs = new List<(int, int)>();
        int offset = 0;
        foreach (var p in PartsOf(extent))
        {
            runs.Add((offset + p.FirstUnit(index, ranks) * p.UnitSize, p.LocalUnits(ranks) * p.UnitSize));
            offset += p.Extent;
        }
        return runs;
    }

    /// <summary>
    /// The (start, length) runs of the row-major global tensor of <paramref name="global"/> shape that rank
    /// <paramref name="index"/> of <paramref name="ranks"/> holds, in the order of its local row-major tensor.
    /// </summary>
    public IReadOnlyList<(long Start, long Length)> Runs(Shape global, int index, int ranks)
    {
        ArgumentNullException.ThrowIfNull(global);
        if (IsReplicated || ranks == 1 && _parts.Length == 0) return [(0, global.NumElements)];
        long outer = 1, inner = 1;
        for (int d = 0; d < Dim; d++) outer *= global[d];
        for (int d = Dim + 1; d < global.Rank; d++) inner *= global[d];
        int extent = global[Dim];
        var ranges = LocalRanges(extent, index, ranks);
        var runs = new List<(long, long)>();
        for (long o = 0; o < outer; o++)
            foreach (var (start, length) in ranges)
                runs.Add(((o * extent + start) * inner, length * inner));
        return runs;
    }

    /// <summary>Writes <paramref name="local"/> (rank <paramref name="index"/>'s tensor) into its places of <paramref name="global"/> (row-major over <paramref name="shape"/>).</summary>
    public void ScatterToGlobal<T>(Shape shape, int index, int ranks, ReadOnlySpan<T> local, Span<T> global)
    {
        if (global.Length != shape.NumElements || local.Length != LocalShape(shape, index, ranks).NumElements)
            throw new ArgumentException($"placement {this}: {local.Length} local and {global.Length} global values for global shape {shape} on rank {index} of {ranks}");
        long at = 0;
        foreach (var (start, length) in Runs(shape, index, ranks))
        {
            local.Slice((int)at, (int)length).CopyTo(global.Slice((int)start, (int)length));
            at += length;
        }
    }

    /// <summary>Parses <see cref="ToString"/>'s form (checkpoint manifests).</summary>
    public static Placement Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        const string partial = "replicated, gradient partial over ";
        if (text == "replicated") return Replicated;
        if (text.StartsWith(partial, StringComparison.Ordinal)) return ReplicatedWithPartialGradient(ParseAxis(text[partial.Length..], text));
        // shard(tp, dim 0) or shard(tp, dim 0, [4x16, 2x16, 2x16])
        if (!text.StartsWith("shard(", StringComparison.Ordinal) || !text.EndsWith(')'))
            throw new FormatException($"placement '{text}' is not 'replicated', 'replicated, gradient partial over AXIS' or 'shard(AXIS, dim D[, [UxS, ...]])'");
        var body = text[6..^1];
        int bracket = body.IndexOf('[');
        var head = (bracket < 0 ? body : body[..bracket]).Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (head.Length != 2 || !head[1].StartsWith("dim ", StringComparison.Ordinal) ||
            !int.TryParse(head[1][4..], NumberStyles.None, CultureInfo.InvariantCulture, out int dim))
            throw new FormatException($"placement '{text}': expected 'shard(AXIS, dim D...)'");
        var parts = new List<ShardPart>();
        if (bracket >= 0)
        {
            var list = body[(bracket + 1)..].TrimEnd(']', ' ');
            foreach (var item in list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                var uv = item.Split('x');
                if (uv.Length != 2 || !int.TryParse(uv[0], NumberStyles.None, CultureInfo.InvariantCulture, out int u) ||
                    !int.TryParse(uv[1], NumberStyles.None, CultureInfo.InvariantCulture, out int s))
                    throw new FormatException($"placement '{text}': part '{item}' is not UNITSxSIZE");
                parts.Add(new ShardPart(u, s));
            }
        }
        return Shard(ParseAxis(head[0], text), dim, [.. parts]);
    }

    private static MeshAxis ParseAxis(string axis, string text) =>
        Enum.TryParse<MeshAxis>(axis, ignoreCase: true, out var a) && Enum.IsDefined(a)
            ? a
            : throw new FormatException($"placement '{text}': unknown mesh axis '{axis}'");

    /// <inheritdoc/>
    public override string ToString()
    {
        if (IsReplicated)
            return PartialGradientAxis is { } p ? $"replicated, gradient partial over {p.ToString().ToLowerInvariant()}" : "replicated";
        var axis = Axis!.Value.ToString().ToLowerInvariant();
        return _parts.Length == 0 ? $"shard({axis}, dim {Dim})" : $"shard({axis}, dim {Dim}, [{string.Join(", ", _parts)}])";
    }

    /// <inheritdoc/>
    public bool Equals(Placement? other) => other is not null && Axis == other.Axis && Dim == other.Dim &&
        PartialGradientAxis == other.PartialGradientAxis && _parts.AsSpan().SequenceEqual(other._parts);

    /// <inheritdoc/>
    public override bool Equals(object? obj) => Equals(obj as Placement);

    /// <inheritdoc/>
    public override int GetHashCode() => ToString().GetHashCode(StringComparison.Ordinal);
}
