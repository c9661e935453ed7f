using System.Collections;

namespace Tessera.Tensors;

/// <summary>Immutable list of dimension sizes. A rank-0 shape is a scalar with one element.</summary>
public sealed class Shape : IEquatable<Shape>, IReadOnlyList<int>
{
    private readonly int[] _dims;

    /// <summary>Creates a shape; every dimension must be non-negative.</summary>
    public Shape(params int[] dims)
    {
        ArgumentNullException.ThrowIfNull(dims);
        foreach (var d in dims)
            if (d < 0) throw new ArgumentException($"shape ({string.Join(", ", dims)}) has a negative dimension");
        _dims = (int[])dims.Clone();
        long n = 1;
        foreach (var d in _dims) n = checked(n * d);
        NumElements = n;
    }

    /// <summary>Number of dimensions.</summary>
    public int Rank => _dims.Length;

    /// <summary>Product of the dimensions.</summary>
    public long NumElements { get; }

    /// <summary>Size of dimension <paramref name="i"/>; negative indexes count from the end.</summary>
    public int this[int i] => _dims[i < 0 ? i + _dims.Length : i];

    /// <summary>Number of dimensions (IReadOnlyList).</summary>
    public int Count => _dims.Length;

    /// <summary>A copy of the dimensions.</summary>
    public int[] ToArray() => (int[])_dims.Clone();

    /// <summary>Row-major (C order) strides in elements.</summary>
    public long[] ContiguousStrides()
    {
        var s = new long[_dims.Length];
        long acc = 1;
        for (int i = _dims.Length - 1; i >= 0; i--) { s[i] = acc; acc *= _dims[i]; }
        return s;
    }

    public static implicit operator Shape(int[] dims) => new(dims);

    public bool Equals(Shape? other) => other is not null && _dims.AsSpan().SequenceEqual(other._dims);
    public override bool Equals(object? obj) => obj is Shape s && Equals(s);
    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (var d in _dims) h.Add(d);
        return h.ToHashCode();
    }
    public static bool operator ==(Shape? a, Shape? b) => a is null ? b is null : a.Equals(b);
    public static bool operator !=(Shape? a, Shape? b) => !(a == b);
    public IEnumerator<int> GetEnumerator() => ((IEnumerable<int>)_dims).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => _dims.GetEnumerator();
    public override string ToString() => "(" + string.Join(", ", _dims) + ")";
}
