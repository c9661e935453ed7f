using System.Runtime.InteropServices;

namespace Tessera.Bench.Gemm;

/// <summary>
/// OpenBLAS's cblas_sgemm / cblas_dgemm loaded at run time, the comparison point of the GEMM benchmark.
/// Never a dependency of the library or its tests.
/// </summary>
internal sealed unsafe class OpenBlas
{
    private const int RowMajor = 101, NoTrans = 111, Trans = 112;

    private readonly delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> _sgemm;
    private readonly delegate* unmanaged<int, int, int, int, int, int, double, double*, int, double*, int, double, double*, int, void> _dgemm;
    private readonly delegate* unmanaged<int, void> _setThreads;
    private readonly delegate* unmanaged<byte*> _coreName;

    private OpenBlas(nint lib, string path)
    {
        Path = path;
        _sgemm = (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)NativeLibrary.GetExport(lib, "cblas_sgemm");
        _dgemm = (delegate* unmanaged<int, int, int, int, int, int, double, double*, int, double*, int, double, double*, int, void>)NativeLibrary.GetExport(lib, "cblas_dgemm");
        _setThreads = NativeLibrary.TryGetExport(lib, "openblas_set_num_threads", out nint st) ? (delegate* unmanaged<int, void>)st : null;
        _coreName = NativeLibrary.TryGetExport(lib, "openblas_get_corename", out nint cn) ? (delegate* unmanaged<byte*>)cn : null;
    }

    /// <summary>The file that was loaded.</summary>
    public string Path { get; }

    /// <summary>The kernel family OpenBLAS picked for this CPU (e.g. "SkylakeX", "Zen"), or "?".</summary>
    public string CoreName => _coreName == null ? "?" : Marshal.PtrToStringAnsi((nint)_coreName()) ?? "?";

    /// <summary>Loads libopenblas from the usual names and Debian/Ubuntu's alternatives directories; null when absent.</summary>
    public static OpenBlas? TryLoad()
    {
        string arch = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
        string[] candidates =
        [
            "libopenblas.so.0",
            $"/usr/lib/{arch}/libopenblas.so.0",
            $"/usr/lib/{arch}/openblas-pthread/libopenblas.so.0",
            $"/usr/lib/{arch}/openblas-openmp/libopenblas.so.0",
            "libopenblas.so",
            "libopenblas.dylib",
            "libopenblas.dll",
        ];
        foreach (string c in candidates)
            if (NativeLibrary.TryLoad(c, out nint lib) && NativeLibrary.TryGetExport(lib, "cblas_sgemm", out _))
                return new OpenBlas(lib, c);
        return null;
    }

    /// <summary>Sets OpenBLAS's thread count (also settable by OPENBLAS_NUM_THREADS before loading).</summary>
    public void SetThreads(int n)
    {
        if (_setThreads != null)
            _setThreads(n);
    }

    /// <summary>Row-major C (M,N) = alpha op(A) op(B) + beta C, same conventions as Tessera's Gemm.</summary>
    public void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
        => _sgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);

    /// <summary>Double-precision counterpart of <see cref="Sgemm"/>.</summary>
    public void Dgemm(bool transA, bool transB, int m, int n, int k, double alpha, double* a, int lda, double* b, int ldb, double beta, double* c, int ldc)
        => _dgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
