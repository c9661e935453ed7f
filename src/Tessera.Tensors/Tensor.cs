namespace Tessera.Tensors;

/// <summary>
/// A cheap handle over a <see cref="Storage"/> plus a layout: shape, strides and offset, all in
/// elements. Views (transpose, slice, reshape of contiguous data) share storage and copy nothing.
/// Code above the backend never reads the memory: it calls <see cref="IBackend"/> ops, and
/// <see cref="IBackend.CopyToHost{T}"/> when a value must reach the host.
/// </summary>
public sealed class Tensor
{
    private readonly long[] _strides;

    /// <summary>Wraps a storage with an explicit layout; checks that every element is in bounds.</summary>
    public Tensor(Storage storage, Shape shape, long[] strides, long offset)
    {
        ArgumentNullException.ThrowIfNull(storage);
        ArgumentNullException.ThrowIfNull(shape);
        if (strides.Length != shape.Rank)
            throw new ArgumentException($"strides rank {strides.Length} does not match shape {shape}");
        Storage = storage;
        Shape = shape;
        _strides = (long[])strides.Clone();
        Offset = offset;
        if (shape.NumElements > 0)
        {
            long lo = offset, hi = offset;
            for (int i = 0; i < shape.Rank; i++)
            {
                long span = (long)(shape[i] - 1) * strides[i];
                if (span < 0) lo += span; else hi += span;
            }
            if (lo < 0 || hi >= storage.Length)
                throw new ArgumentException($"view {shape} with strides ({string.Join(", ", strides)}) at offset {offset} exceeds storage of {storage.Length} elements");
        }
    }

    /// <summary>A contiguous row-major view of a whole storage (or its first elements).</summary>
    public Tensor(Storage storage, Shape shape) : this(storage, shape, shape.ContiguousStrides(), 0) { }

    /// <summary>The buffer this view reads.</summary>
    public Storage Storage { get; }

    /// <summary>Dimension sizes.</summary>
    public Shape Shape { get; }

    /// <summary>Stride of each dimension, in elements.</summary>
    public ReadOnlySpan<long> Strides => _strides;

    /// <summary>Index of the first element in the storage.</summary>
    public long Offset { get; }

    /// <summary>Element type.</summary>
    public DType DType => Storage.DType;

    /// <summary>Where the memory lives.</summary>
    public Device Device => Storage.Device;

    /// <summary>The backend that computes on this tensor.</summary>
    public IBackend Backend => Storage.Backend;

    /// <summary>Number of dimensions.</summary>
    public int Rank => Shape.Rank;

    /// <summary>Number of elements.</summary>
    public long NumElements => Shape.NumElements;

    /// <summary>Size of dimension <paramref name="dim"/> (negative counts from the end).</summary>
    public int Size(int dim) => Shape[dim];

    /// <summary>Stride of dimension <paramref name="dim"/> (negative counts from the end).</summary>
    public long Stride(int dim) => _strides[dim < 0 ? dim + Rank : dim];

    /// <summary>True when the elements are laid out row-major with no gaps.</summary>
    public bool IsContiguous
    {
        get
        {
            long expected = 1;
            for (int i = Rank - 1; i >= 0; i--)
            {
                if (Shape[i] == 1) continue;
                if (_strides[i] != expected) return false;
                expected *= Shape[i];
            }
            return true;
        }
    }

    /// <summary>A view with another shape over the same elements; requires contiguous data.</summary>
    public Tensor Reshape(params int[] dims)
    {
        int infer = Array.IndexOf(dims, -1);
        if (infer >= 0)
        {
            long known = 1;
            for (int i = 0; i < dims.Length; i++) if (i != infer) known *= dims[i];
            dims = (int[])dims.Clone();
            dims[infer] = known == 0 ? 0 : (int)(NumElements / known);
        }
        var shape = new Shape(dims);
        if (shape.NumElements != NumElements)
            throw new ArgumentException($"cannot reshape {Shape} ({NumElements} elements) to {shape}");
        if (!IsContiguous)
            throw new InvalidOperationException($"reshape of a non-contiguous view {Shape}: copy it to a contiguous tensor first");
        return new Tensor(Storage, shape, shape.ContiguousStrides(), Offset);
    }

    /// <summary>Swaps two dimensions without copying.</summary>
    public Tensor Transpose(int dim0, int dim1)
    {
        dim0 = Normalize(dim0); dim1 = Normalize(dim1);
        var dims = Shape.ToArray();
        var strides = (long[])_strides.Clone();
        (dims[dim0], dims[dim1]) = (dims[dim1], dims[dim0]);
        (strides[dim0], strides[dim1]) = (strides[dim1], strides[dim0]);
        return new Tensor(Storage, new Shape(dims), strides, Offset);
    }

    /// <summary>Elements <paramref name="start"/> .. start+length-1 of dimension <paramref name="dim"/>, without copying.</summary>
    public Tensor Slice(int dim, int start, int length)
    {
        dim = Normalize(dim);
        if (start < 0 || length < 0 || start + length > Shape[dim])
            throw new ArgumentOutOfRangeException(nameof(start), $"slice [{start}, {start + length}) of dimension {dim} of size {Shape[dim]}");
        var dims = Shape.ToArray();
        dims[dim] = length;
        return new Tensor(Storage, new Shape(dims), _strides, Offset + start * _strides[dim]);
    }

    /// <summary>Index <paramref name="index"/> of dimension <paramref name="dim"/>, dropping that dimension.</summary>
    public Tensor Select(int dim, int index)
    {
        dim = Normalize(dim);
        if (index < 0 || index >= Shape[dim])
            throw new ArgumentOutOfRangeException(nameof(index), $"index {index} of dimension {dim} of size {Shape[dim]}");
        var dims = new List<int>(Shape); dims.RemoveAt(dim);
        var strides = new List<long>(_strides); strides.RemoveAt(dim);
        return new Tensor(Storage, new Shape(dims.ToArray()), strides.ToArray(), Offset + index * _strides[dim]);
    }

    /// <summary>A contiguous view of shape.NumElements elements at <paramref name="elementOffset"/> of a contiguous tensor, as <paramref name="shape"/>.</summary>
    public Tensor Narrow(long elementOffset, Shape shape)
    {
        if (!IsContiguous) throw new InvalidOperationException("Narrow needs a contiguous tensor");
        if (elementOffset < 0 || elementOffset + shape.NumElements > NumElements)
            throw new ArgumentOutOfRangeException(nameof(elementOffset), $"[{elementOffset}, +{shape.NumElements}) outside {NumElements} elements");
        return new Tensor(Storage, shape, shape.ContiguousStrides(), Offset + elementOffset);
    }

    private int Normalize(int dim)
    {
        int d = dim < 0 ? dim + Rank : dim;
        if (d < 0 || d >= Rank) throw new ArgumentOutOfRangeException(nameof(dim), $"dimension {dim} of a rank-{Rank} tensor");
        return d;
    }

    public override string ToString() => $"Tensor{Shape} {DType} on {Device}";
}
