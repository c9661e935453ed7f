using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// The part of a tensor one rank keeps: the runs <see cref="Ranges"/> (start, length) of dimension <see cref="Dim"/>,
/// concatenated along it in the order listed, every other dimension whole (what a <see cref="Placement"/> deals a rank:
/// <see cref="Placement.LocalRanges"/>). A row slice of a row-major tensor is one contiguous range of its elements; a
/// column slice is one range per row.
/// </summary>
internal sealed record TensorSlice(int Dim, IReadOnlyList<(int Start, int Length)> Ranges)
{
    /// <summary>The whole of a tensor of <paramref name="shape"/>.</summary>
    public static TensorSlice Whole(Shape shape) => new(0, [(0, shape.Rank == 0 ? 1 : shape[0])]);

    /// <summary>The part of <paramref name="parameter"/>'s global tensor this rank holds (its placement's slice).</summary>
    public static TensorSlice Of(Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        if (parameter.Shape == parameter.GlobalShape) return Whole(parameter.GlobalShape);
        int dim = parameter.Placement.Dim;
        return new TensorSlice(dim, parameter.Placement.LocalRanges(parameter.GlobalShape[dim], parameter.ShardIndex, parameter.ShardCount));
    }

    /// <summary>Whether this keeps all of a tensor of <paramref name="shape"/>.</summary>
    public bool IsWhole(Shape shape) => shape.Rank == 0 || Ranges.Count == 1 && Ranges[0] == (0, shape[Dim]);

    /// <summary>The same runs along another dimension (a transposed tensor's).</summary>
    public TensorSlice Along(int dim) => this with { Dim = dim };

    /// <summary>The shape of the part of a tensor of <paramref name="shape"/>.</summary>
    public Shape LocalShape(Shape shape)
    {
        if (shape.Rank == 0) return shape;
        var dims = shape.ToArray();
        dims[Dim] = Ranges.Sum(r => r.Length);
        return new Shape(dims);
    }

    /// <summary>
    /// The element runs (start, length) of a row-major tensor of <paramref name="shape"/> that make up the part, in its
    /// row-major order, adjacent runs merged (a row slice is one run; a column slice one per row).
    /// </summary>
    public IReadOnlyList<(long Start, long Length)> Runs(Shape shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        if (shape.Rank == 0) return [(0, 1)];
        if (Dim >= shape.Rank) throw new ArgumentException($"slice along dimension {Dim} of a tensor of shape {shape}, which has {shape.Rank} dimensions");
        int extent = shape[Dim];
        foreach (var (start, length) in Ranges)
            if (start < 0 || length < 0 || start + (long)length > extent)
                throw new ArgumentException($"slice ({start}, {length}) of dimension {Dim} is outside a tensor of shape {shape}");
        long outer = 1, inner = 1;
        for (int d = 0; d < Dim; d++) outer *= shape[d];
        for (int d = Dim + 1; d < shape.Rank; d++) inner *= shape[d];
        var runs = new List<(long Start, long Length)>();
        for (long o = 0; o < outer; o++)
            foreach (var (start, length) in Ranges)
            {
                if (length == 0) continue;
                long s = (o * extent + start) * inner, n = length * inner;
                if (runs.Count > 0 && runs[^1].Start + runs[^1].Length == s) runs[^1] = (runs[^1].Start, runs[^1].Length + n);
                else runs.Add((s, n));
            }
        return runs;
    }
}
