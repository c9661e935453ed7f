using Tessera.Tensors;

namespace Tessera.Tests.Support;

/// <summary>
/// Random test data and host round trips through doubles, so that a test can write one F64
/// reference and run the op under test in F32 or F64.
/// </summary>
public static class TestTensors
{
    /// <summary><paramref name="count"/> values from N(mean, scale^2), drawn by Box-Muller from <paramref name="rng"/>.</summary>
    public static double[] Normal(Random rng, long count, double scale = 1.0, double mean = 0.0)
    {
        var values = new double[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            values[i] = mean + scale * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
        }
        return values;
    }

    /// <summary><paramref name="count"/> values uniform in [lo, hi).</summary>
    public static double[] Uniform(Random rng, long count, double lo, double hi)
    {
        var values = new double[count];
        for (long i = 0; i < count; i++) values[i] = lo + (hi - lo) * rng.NextDouble();
        return values;
    }

    /// <summary>A new contiguous tensor of <paramref name="dtype"/> holding <paramref name="values"/> (cast from double).</summary>
    public static Tensor FromDoubles(IBackend backend, double[] values, DType dtype, params int[] dims)
    {
        var shape = new Shape(dims);
        if (values.Length != shape.NumElements)
            throw new ArgumentException($"{values.Length} values do not fill shape {shape}");
        var f64 = backend.FromHost<double>(values, shape);
        if (dtype == DType.F64) return f64;
        var t = backend.Allocate(shape, dtype);
        backend.Copy(f64, t);
        return t;
    }

    /// <summary>A new tensor of random normal values.</summary>
    public static Tensor RandomNormal(IBackend backend, Random rng, DType dtype, params int[] dims)
        => FromDoubles(backend, Normal(rng, new Shape(dims).NumElements), dtype, dims);

    /// <summary>The elements of any tensor (any layout, any dtype) in row-major order, as doubles.</summary>
    public static double[] ToDoubles(IBackend backend, Tensor tensor)
    {
        var f64 = backend.Allocate(tensor.Shape, DType.F64);
        backend.Copy(tensor, f64);
        return backend.ToArray<double>(f64);
    }

    /// <summary>Overwrites <paramref name="values"/> into an existing tensor (cast to its dtype).</summary>
    public static void Write(IBackend backend, Tensor tensor, double[] values)
    {
        var f64 = backend.FromHost<double>(values, tensor.Shape);
        backend.Copy(f64, tensor);
    }

    /// <summary>Fills a tensor with NaN, so that an element an op forgets to write fails the comparison.</summary>
    public static void Poison(IBackend backend, Tensor tensor) => backend.Fill(tensor, double.NaN);

    /// <summary>Sum of a[i] * b[i].</summary>
    public static double Dot(double[] a, double[] b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"dot of lengths {a.Length} and {b.Length}");
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
