namespace Tessera.Tensors;

/// <summary>Conveniences built only from <see cref="IBackend"/> ops.</summary>
public static class BackendExtensions
{
    /// <summary>A new tensor filled with zeros.</summary>
    public static Tensor Zeros(this IBackend backend, Shape shape, DType dtype)
    {
        var t = backend.Allocate(shape, dtype);
        backend.Fill(t, 0);
        return t;
    }

    /// <summary>A new tensor holding a copy of <paramref name="data"/> (row-major) with the given shape.</summary>
    public static Tensor FromHost<T>(this IBackend backend, ReadOnlySpan<T> data, Shape shape) where T : unmanaged
    {
        if (data.Length != shape.NumElements)
            throw new ArgumentException($"{data.Length} values do not fill shape {shape} ({shape.NumElements} elements)");
        var t = backend.Allocate(shape, DTypeInfo.Of<T>());
        backend.CopyFromHost(data, t);
        return t;
    }

    /// <summary>A new tensor holding a copy of <paramref name="data"/> with the given dimensions.</summary>
    public static Tensor FromArray<T>(this IBackend backend, T[] data, params int[] dims) where T : unmanaged
        => backend.FromHost<T>(data, new Shape(dims));

    /// <summary>Copies a tensor to a new host array (waits for pending work).</summary>
    public static T[] ToArray<T>(this IBackend backend, Tensor tensor) where T : unmanaged
    {
        var result = new T[tensor.NumElements];
        backend.CopyToHost<T>(tensor, result);
        return result;
    }

    /// <summary>Reads a scalar (or one-element) tensor as a double (waits for pending work).</summary>
    public static double ReadScalar(this IBackend backend, Tensor scalar)
    {
        if (scalar.NumElements != 1) throw new ArgumentException($"ReadScalar needs one element, got {scalar.Shape}");
        switch (scalar.DType)
        {
            case DType.F64: { Span<double> d = stackalloc double[1]; backend.CopyToHost(scalar, d); return d[0]; }
            case DType.F32: { Span<float> f = stackalloc float[1]; backend.CopyToHost(scalar, f); return f[0]; }
            case DType.I32: { Span<int> i = stackalloc int[1]; backend.CopyToHost(scalar, i); return i[0]; }
            default:
                throw new NotSupportedException($"ReadScalar of {scalar.DType}");
        }
    }

    /// <summary>A contiguous copy of a tensor in <paramref name="dtype"/> (or its own dtype).</summary>
    public static Tensor Contiguous(this IBackend backend, Tensor tensor, DType? dtype = null)
    {
        var t = backend.Allocate(tensor.Shape, dtype ?? tensor.DType);
        backend.Copy(tensor, t);
        return t;
    }

    /// <summary>
    /// <see cref="IBackend.AdamWRanges"/> as one <see cref="IBackend.AdamW"/> call per non-empty range on the range's slices, with
    /// <paramref name="step"/>'s weight decay where the range is decayed and 0 elsewhere (the ranges already validated).
    /// </summary>
    public static void AdamWRangeByRange(this IBackend backend, Tensor parameters, Tensor gradients, Tensor m, Tensor v,
        IReadOnlyList<AdamWRange> ranges, in AdamWStep step, Tensor? gradSumOfSquares, Tensor? lowPrecisionCopy)
    {
        foreach (var r in ranges)
        {
            if (r.Length == 0) continue;
            var shape = new Shape((int)r.Length);
            Tensor Part(Tensor t) => t.Narrow(r.Offset, shape);
            backend.AdamW(Part(parameters), Part(gradients), Part(m), Part(v), step with { WeightDecay = r.WeightDecay ? step.WeightDecay : 0.0 },
                gradSumOfSquares, lowPrecisionCopy is null ? null : Part(lowPrecisionCopy));
        }
    }
}
