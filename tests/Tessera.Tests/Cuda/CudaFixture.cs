using Xunit;
using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tests.Support;

namespace Tessera.Tests.Cuda;

/// <summary>
/// One CudaBackend shared by the CUDA tests (opening a context per test would cost seconds).
/// Where there is no driver or GPU it holds the reason, and every test skips with it.
/// </summary>
public sealed class CudaFixture : IDisposable
{
    private readonly CudaBackend? _backend;

    public CudaFixture()
    {
        try
        {
            _backend = new CudaBackend();
        }
        catch (Exception e) when (e is Tessera.Cuda.Interop.CudaUnavailableException or DllNotFoundException or EntryPointNotFoundException)
        {
            Reason = e.Message;
        }
    }

    /// <summary>Why there is no backend, or null.</summary>
    public string? Reason { get; }

    /// <summary>The backend; skips the calling test when there is none.</summary>
    public CudaBackend Backend
    {
        get
        {
            if (_backend is null) Assert.Skip("no CUDA device: " + Reason);
            return _backend!;
        }
    }

    public void Dispose() => _backend?.Dispose();
}

[CollectionDefinition("cuda")]
public sealed class CudaCollection : ICollectionFixture<CudaFixture>;

/// <summary>Helpers shared by the CUDA op tests: random inputs (in the tensor's own precision), poisoned outputs, norm-wise comparison.</summary>
public abstract class CudaTestBase(CudaFixture fixture)
{
    /// <summary>The test's random source; its seed is in the test's output.</summary>
    protected readonly Random Rng = TestRandom.Create();

    protected CudaBackend Gpu => fixture.Backend;

    /// <summary>Median milliseconds of <paramref name="op"/> on the backend's stream: CUDA events around each of
    /// <paramref name="reps"/> runs after 3 warm-ups.</summary>
    protected double MedianMs(Action op, int reps = 20) => MedianMs(Gpu, op, reps);

    /// <summary>Median milliseconds of <paramref name="op"/> on <paramref name="backend"/>'s stream: CUDA events around each
    /// of <paramref name="reps"/> runs after 3 warm-ups.</summary>
    protected static double MedianMs(CudaBackend backend, Action op, int reps = 20)
    {
        for (int i = 0; i < 3; i++) op();
        using var start = new Tessera.Cuda.Runtime.CudaEvent(backend.CudaDevice);
        using var end = new Tessera.Cuda.Runtime.CudaEvent(backend.CudaDevice);
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            start.Record(backend.Stream);
            op();
            end.Record(backend.Stream);
            end.Synchronize();
            times.Add(end.ElapsedSince(start));
        }
        times.Sort();
        return times[reps / 2];
    }

    /// <summary>A tensor of uniform values in [-scale, scale), and those values exactly as stored (rounded to the dtype).</summary>
    protected (Tensor Tensor, double[] Values) Random(DType dtype, double scale, params int[] dims)
    {
        var shape = new Shape(dims);
        var values = new double[shape.NumElements];
        for (int i = 0; i < values.Length; i++) values[i] = (Rng.NextDouble() * 2 - 1) * scale;
        return (Upload(values, dtype, dims), Stored(values, dtype));
    }

    /// <summary>The values as the dtype stores them.</summary>
    protected static double[] Stored(double[] values, DType dtype) => dtype switch
    {
        DType.F32 => values.Select(v => (double)(float)v).ToArray(),
        DType.BF16 => values.Select(v => (double)BFloat16.FromSingle((float)v).ToSingle()).ToArray(),
        DType.F16 => values.Select(v => (double)(float)(Half)(float)v).ToArray(),
        _ => values,
    };

    protected Tensor Upload(double[] values, DType dtype, params int[] dims) => Upload(Gpu, values, dtype, dims);

    /// <summary>The values rounded to the dtype on <paramref name="backend"/> (e.g. a second backend with other options).</summary>
    protected static Tensor Upload(IBackend backend, double[] values, DType dtype, params int[] dims)
    {
        var t = backend.Allocate(new Shape(dims), dtype);
        switch (dtype)
        {
            case DType.F32: backend.CopyFromHost<float>(values.Select(v => (float)v).ToArray(), t); break;
            case DType.F64: backend.CopyFromHost<double>(values, t); break;
            case DType.BF16: backend.CopyFromHost<BFloat16>(values.Select(v => BFloat16.FromSingle((float)v)).ToArray(), t); break;
            case DType.F16: backend.CopyFromHost<Half>(values.Select(v => (Half)(float)v).ToArray(), t); break;
            default: throw new NotSupportedException(dtype.ToString());
        }
        return t;
    }

    protected Tensor UploadInts(int[] values, params int[] dims)
    {
        var t = Gpu.Allocate(new Shape(dims), DType.I32);
        Gpu.CopyFromHost<int>(values, t);
        return t;
    }

    protected double[] Download(Tensor t) => Download(Gpu, t);

    /// <summary>The tensor's values as doubles, from <paramref name="backend"/>.</summary>
    protected static double[] Download(IBackend backend, Tensor t) => t.DType switch
    {
        DType.F32 => backend.ToArray<float>(t).Select(v => (double)v).ToArray(),
        DType.F64 => backend.ToArray<double>(t),
        DType.BF16 => backend.ToArray<BFloat16>(t).Select(v => (double)v.ToSingle()).ToArray(),
        DType.F16 => backend.ToArray<Half>(t).Select(v => (double)(float)v).ToArray(),
        _ => throw new NotSupportedException(t.DType.ToString()),
    };

    /// <summary>A new tensor full of NaN, so an element the op forgets to write fails the comparison.</summary>
    protected Tensor Poisoned(DType dtype, params int[] dims)
    {
        var t = Gpu.Allocate(new Shape(dims), dtype);
        Gpu.Fill(t, double.NaN);
        return t;
    }

    /// <summary>
    /// Tolerance of a dtype's results against an f64 reference on the same (rounded) inputs:
    /// f32 math lands near 1e-7 relative, so 1e-5 leaves room for long sums; bf16 outputs carry
    /// 8 significant bits (relative rounding 2^-9 = 2e-3), so 1e-2.
    /// </summary>
    protected static double Tolerance(DType dtype) => dtype switch
    {
        DType.F32 => 1e-5,
        DType.F64 => 1e-12,
        _ => 1e-2,
    };

    /// <summary>Asserts ‖actual − expected‖ / ‖expected‖ ≤ tolerance, and that no element is NaN.</summary>
    protected static void AssertClose(double[] expected, double[] actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNaN(actual[i])) Assert.Fail($"{what}: element {i} is NaN (not written, or wrong), expected {expected[i]}");
            diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
            norm += expected[i] * expected[i];
        }
        double rel = Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
        Assert.True(rel <= tolerance, $"{what}: relative error {rel:E3} exceeds {tolerance:E1}");
    }
}
