using System.Numerics;
using System.Runtime.InteropServices;
using Tessera.Tensors.Cpu.Gemm;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU GEMM against a naive F64 triple loop (<see cref="Gemm.Reference{T}"/>) on fresh random operands.
/// Tolerances: F32 relative Frobenius error below 1e-5. Each element is a K-term float32 sum (unit
/// roundoff 6e-8); rounding errors of random data grow like sqrt(K), so K up to ~800 gives ~1.7e-6 typical,
/// and 1e-5 still catches any wrong element (a single misplaced term is ~1/sqrt(K) ~ 4e-2 relative).
/// F64: below 1e-12 (unit roundoff 1.1e-16, same growth).
/// </summary>
public unsafe class GemmTests
{
    private const double F32Tolerance = 1e-5;
    private const double F64Tolerance = 1e-12;

    // Sizes around every block edge: 1, below/above MR (8 or 6), NR (48 or 16), KC (384 or 256, so k = 777
    // accumulates three k blocks), MC (128), NC (768), odd primes.
    public static TheoryData<int, int, int> EdgeShapes => new()
    {
        { 1, 1, 1 },
        { 7, 5, 3 },
        { 1, 65, 33 },
        { 33, 1, 7 },
        { 9, 49, 17 },
        { 33, 65, 257 },
        { 65, 33, 300 },
        { 131, 97, 65 },
        { 257, 145, 19 },
        { 17, 50, 777 },
        { 9, 800, 40 },
    };

    public static TheoryData<bool, bool> Transposes => new() { { false, false }, { false, true }, { true, false }, { true, true } };

    [Theory]
    [MemberData(nameof(EdgeShapes))]
    public void SgemmMatchesF64ReferenceForEveryTransposeAndEdgeSize(int m, int n, int k)
    {
        foreach (var (ta, tb) in AllTransposes())
            foreach (int threads in new[] { 1, 2 })
            {
                double err = RelativeError<float>(ta, tb, m, n, k, 1.0, 0.0, threads, pad: 0, Sgemm, seed: m * 7 + n + k);
                Assert.True(err < F32Tolerance, $"sgemm tA={ta} tB={tb} {m}x{n}x{k} threads={threads}: rel. error {err:E2}");
            }
    }

    [Theory]
    [MemberData(nameof(Transposes))]
    public void SgemmAppliesAlphaAndBetaWithWideLeadingDimensions(bool ta, bool tb)
    {
        foreach (var (alpha, beta) in new[] { (0.5, 1.0), (-1.25, 0.75), (2.0, -1.0) })
            foreach (int threads in new[] { 1, 2 })
            {
                double err = RelativeError<float>(ta, tb, 37, 101, 400, alpha, beta, threads, pad: 5, Sgemm, seed: 11);
                Assert.True(err < F32Tolerance, $"sgemm tA={ta} tB={tb} alpha={alpha} beta={beta} threads={threads}: rel. error {err:E2}");
            }
    }

    [Theory]
    [MemberData(nameof(Transposes))]
    public void SgemmWithBetaZeroNeverReadsNaNPoisonedC(bool ta, bool tb)
    {
        // RelativeError poisons C with NaN whenever beta == 0; any read of C would propagate NaN into the error.
        foreach (int threads in new[] { 1, 2 })
        {
            double err = RelativeError<float>(ta, tb, 70, 150, 260, 1.5, 0.0, threads, pad: 3, Sgemm, seed: 5);
            Assert.True(err < F32Tolerance, $"tA={ta} tB={tb} threads={threads}: rel. error {err:E2}");
        }
    }

    [Fact]
    public void SgemmOnGpt2SizedProductMatchesReference()
    {
        // One realistic block-crossing size per transpose form (several KC, MC and NR blocks, two threads).
        foreach (var (ta, tb) in AllTransposes())
        {
            double err = RelativeError<float>(ta, tb, 136, 200, 520, 1.0, 0.0, 2, pad: 0, Sgemm, seed: 3);
            Assert.True(err < F32Tolerance, $"tA={ta} tB={tb}: rel. error {err:E2}");
        }
    }

    [Fact]
    public void ThreadedSgemmIsBitwiseEqualToSingleThreaded()
    {
        // Threads split C into disjoint blocks and every element sums its k blocks in the same order.
        const int m = 96, n = 400, k = 300;
        var rng = new Random(17);
        float[] a = RandomArray<float>(rng, m * k), b = RandomArray<float>(rng, k * n);
        float[] c1 = new float[m * n], c2 = new float[m * n];
        fixed (float* pa = a, pb = b, p1 = c1, p2 = c2)
        {
            Gemm.Sgemm(false, false, m, n, k, 1f, pa, k, pb, n, 0f, p1, n, 1);
            Gemm.Sgemm(false, false, m, n, k, 1f, pa, k, pb, n, 0f, p2, n, 2);
        }
        Assert.Equal(c1, c2);
    }

    [Theory]
    [MemberData(nameof(Transposes))]
    public void DgemmMatchesReferenceForEdgeSizesAlphaBetaAndThreads(bool ta, bool tb)
    {
        foreach (var (m, n, k) in new[] { (1, 1, 1), (13, 17, 9), (65, 33, 300), (131, 70, 41) })
            foreach (var (alpha, beta) in new[] { (1.0, 0.0), (-0.5, 1.5) })
                foreach (int threads in new[] { 1, 2 })
                {
                    double err = RelativeError<double>(ta, tb, m, n, k, alpha, beta, threads, pad: 2, Dgemm, seed: m + n);
                    Assert.True(err < F64Tolerance, $"dgemm tA={ta} tB={tb} {m}x{n}x{k} alpha={alpha} beta={beta} threads={threads}: rel. error {err:E2}");
                }
    }

    [Fact]
    public void EveryKernelThisCpuSupportsMatchesReference()
    {
        // Gemm dispatches to the widest kernel; exercise the narrower ones too where the CPU runs them.
        var sgemms = new List<(string Name, GemmCall<float> Call)> { ("scalar", GemmDriver<float, ScalarGemmKernel<float>>.Run) };
        if (SgemmKernelAvx2.IsSupported) sgemms.Add(("avx2", GemmDriver<float, SgemmKernelAvx2>.Run));
        if (SgemmKernelAvx512.IsSupported) sgemms.Add(("avx512", GemmDriver<float, SgemmKernelAvx512>.Run));
        var dgemms = new List<(string Name, GemmCall<double> Call)> { ("scalar", GemmDriver<double, ScalarGemmKernel<double>>.Run) };
        if (DgemmKernelAvx2.IsSupported) dgemms.Add(("avx2", GemmDriver<double, DgemmKernelAvx2>.Run));
        if (DgemmKernelAvx512.IsSupported) dgemms.Add(("avx512", GemmDriver<double, DgemmKernelAvx512>.Run));
        foreach (var (ta, tb) in AllTransposes())
        {
            foreach (var (name, call) in sgemms)
            {
                double err = RelativeError(ta, tb, 23, 53, 270, 0.75, 0.5, 2, pad: 1, call, seed: 23);
                Assert.True(err < F32Tolerance, $"{name} sgemm tA={ta} tB={tb}: rel. error {err:E2}");
            }
            foreach (var (name, call) in dgemms)
            {
                double err = RelativeError(ta, tb, 23, 53, 270, 0.75, 0.5, 2, pad: 1, call, seed: 29);
                Assert.True(err < F64Tolerance, $"{name} dgemm tA={ta} tB={tb}: rel. error {err:E2}");
            }
        }
    }

    [Fact]
    public void ZeroDepthProductScalesCByBeta()
    {
        float[] c = [1f, 2f, float.NaN, 4f];
        fixed (float* pc = c)
        {
            Gemm.Sgemm(false, false, 2, 2, 0, 1f, null, 1, null, 1, 0.5f, pc, 2, 1);
            Assert.Equal(new[] { 0.5f, 1f, float.NaN, 2f }, c);
            Gemm.Sgemm(false, false, 2, 2, 0, 1f, null, 1, null, 1, 0f, pc, 2, 1);
        }
        Assert.Equal(new[] { 0f, 0f, 0f, 0f }, c);
    }

    internal delegate void GemmCall<T>(bool transA, bool transB, int m, int n, int k, T alpha,
        T* a, long lda, T* b, long ldb, T beta, T* c, long ldc, int threads) where T : unmanaged;

    private static void Sgemm(bool ta, bool tb, int m, int n, int k, float alpha, float* a, long lda, float* b, long ldb,
        float beta, float* c, long ldc, int threads) => Gemm.Sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);

    private static void Dgemm(bool ta, bool tb, int m, int n, int k, double alpha, double* a, long lda, double* b, long ldb,
        double beta, double* c, long ldc, int threads) => Gemm.Dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);

    private static IEnumerable<(bool, bool)> AllTransposes() => [(false, false), (false, true), (true, false), (true, true)];

    /// <summary>
    /// Runs the GEMM under test in T on random operands stored with leading dimensions width + pad, and returns
    /// its relative Frobenius error against the F64 reference. C is NaN-poisoned when beta == 0, and the pad
    /// columns of C must keep their sentinel (asserted here).
    /// </summary>
    private static double RelativeError<T>(bool ta, bool tb, int m, int n, int k, double alpha, double beta, int threads,
        int pad, GemmCall<T> gemm, int seed) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var rng = new Random(seed);
        int aRows = ta ? k : m, aCols = ta ? m : k, bRows = tb ? n : k, bCols = tb ? k : n;
        int lda = aCols + pad, ldb = bCols + pad, ldc = n + pad;
        T[] a = RandomArray<T>(rng, Math.Max(1, aRows * lda));
        T[] b = RandomArray<T>(rng, Math.Max(1, bRows * ldb));
        T[] c = RandomArray<T>(rng, m * ldc);
        T sentinel = T.CreateChecked(12345.0);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < ldc; j++)
                if (j >= n) c[i * ldc + j] = sentinel;
                else if (beta == 0) c[i * ldc + j] = T.NaN;
        double[] ad = ToDouble(a), bd = ToDouble(b), cd = ToDouble(c);
        fixed (T* pa = a, pb = b, pc = c)
            gemm(ta, tb, m, n, k, T.CreateChecked(alpha), pa, lda, pb, ldb, T.CreateChecked(beta), pc, ldc, threads);
        fixed (double* pa = ad, pb = bd, pc = cd)
            Gemm.Reference(ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
        double num = 0, den = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < ldc; j++)
            {
                double got = double.CreateChecked(c[i * ldc + j]);
                if (j >= n)
                {
                    Assert.True(got == 12345.0, $"C[{i},{j}] is outside the {m}x{n} product but was overwritten with {got}");
                    continue;
                }
                double want = cd[i * ldc + j];
                num += (got - want) * (got - want);
                den += want * want;
            }
        return Math.Sqrt(num / Math.Max(den, double.Epsilon));
    }

    private static T[] RandomArray<T>(Random rng, int len) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var x = new T[len];
        for (int i = 0; i < len; i++) x[i] = T.CreateChecked(rng.NextDouble() * 2 - 1);
        return x;
    }

    private static double[] ToDouble<T>(T[] x) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var d = new double[x.Length];
        for (int i = 0; i < x.Length; i++) d[i] = double.CreateChecked(x[i]);
        return d;
    }
}
