using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// DGEMM micro-kernel for AVX-512: a 12x16 tile in 24 zmm accumulators.
/// </summary>
/// <remarks>Generated shape: 12 rows x 2 vectors of 8 lanes; the broadcast of each packed A element
/// folds into the FMA as an embedded broadcast operand where the JIT can do so.</remarks>
internal readonly unsafe struct DgemmKernelAvx512 : IGemmKernel<double>
{
    public static int MR => 12;
    public static int NR => 16;
    public static int KC => 256;
    public static int MC => 96;
    public static int NC => 2048;
    public static bool IsSupported => Avx512F.IsSupported;

    /// <summary>Computes one 12x16 tile: C = alpha * Ap Bp + beta C (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(int kc, double* a, double* b, double* c, long ldc, double alpha, double beta)
    {
        Vector512<double> c0_0 = default; Vector512<double> c0_1 = default;
        Vector512<double> c1_0 = default; Vector512<double> c1_1 = default;
        Vector512<double> c2_0 = default; Vector512<double> c2_1 = default;
        Vector512<double> c3_0 = default; Vector512<double> c3_1 = default;
        Vector512<double> c4_0 = default; Vector512<double> c4_1 = default;
        Vector512<double> c5_0 = default; Vector512<double> c5_1 = default;
        Vector512<double> c6_0 = default; Vector512<double> c6_1 = default;
        Vector512<double> c7_0 = default; Vector512<double> c7_1 = default;
        Vector512<double> c8_0 = default; Vector512<double> c8_1 = default;
        Vector512<double> c9_0 = default; Vector512<double> c9_1 = default;
        Vector512<double> c10_0 = default; Vector512<double> c10_1 = default;
        Vector512<double> c11_0 = default; Vector512<double> c11_1 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector512<double> b0 = Vector512.LoadAligned(b + 0);
            Vector512<double> b1 = Vector512.LoadAligned(b + 8);
            c0_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[0]), b0, c0_0);
            c0_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[0]), b1, c0_1);
            c1_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[1]), b0, c1_0);
            c1_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[1]), b1, c1_1);
            c2_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[2]), b0, c2_0);
            c2_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[2]), b1, c2_1);
            c3_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[3]), b0, c3_0);
            c3_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[3]), b1, c3_1);
            c4_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[4]), b0, c4_0);
            c4_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[4]), b1, c4_1);
            c5_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[5]), b0, c5_0);
            c5_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[5]), b1, c5_1);
            c6_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[6]), b0, c6_0);
            c6_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[6]), b1, c6_1);
            c7_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[7]), b0, c7_0);
            c7_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[7]), b1, c7_1);
            c8_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[8]), b0, c8_0);
            c8_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[8]), b1, c8_1);
            c9_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[9]), b0, c9_0);
            c9_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[9]), b1, c9_1);
            c10_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[10]), b0, c10_0);
            c10_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[10]), b1, c10_1);
            c11_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[11]), b0, c11_0);
            c11_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[11]), b1, c11_1);
            a += 12;
            b += 16;
        }
        Vector512<double> va = Vector512.Create(alpha);
        if (beta == 0)
        {
            (c0_0 * va).Store(c + 0 * ldc + 0);
            (c0_1 * va).Store(c + 0 * ldc + 8);
            (c1_0 * va).Store(c + 1 * ldc + 0);
            (c1_1 * va).Store(c + 1 * ldc + 8);
            (c2_0 * va).Store(c + 2 * ldc + 0);
            (c2_1 * va).Store(c + 2 * ldc + 8);
            (c3_0 * va).Store(c + 3 * ldc + 0);
            (c3_1 * va).Store(c + 3 * ldc + 8);
            (c4_0 * va).Store(c + 4 * ldc + 0);
            (c4_1 * va).Store(c + 4 * ldc + 8);
            (c5_0 * va).Store(c + 5 * ldc + 0);
            (c5_1 * va).Store(c + 5 * ldc + 8);
            (c6_0 * va).Store(c + 6 * ldc + 0);
            (c6_1 * va).Store(c + 6 * ldc + 8);
            (c7_0 * va).Store(c + 7 * ldc + 0);
            (c7_1 * va).Store(c + 7 * ldc + 8);
            (c8_0 * va).Store(c + 8 * ldc + 0);
            (c8_1 * va).Store(c + 8 * ldc + 8);
            (c9_0 * va).Store(c + 9 * ldc + 0);
            (c9_1 * va).Store(c + 9 * ldc + 8);
            (c10_0 * va).Store(c + 10 * ldc + 0);
            (c10_1 * va).Store(c + 10 * ldc + 8);
            (c11_0 * va).Store(c + 11 * ldc + 0);
            (c11_1 * va).Store(c + 11 * ldc + 8);
        }
        else
        {
            Vector512<double> vb = Vector512.Create(beta);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 0 * ldc + 0), vb, c0_0 * va).Store(c + 0 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 0 * ldc + 8), vb, c0_1 * va).Store(c + 0 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 1 * ldc + 0), vb, c1_0 * va).Store(c + 1 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 1 * ldc + 8), vb, c1_1 * va).Store(c + 1 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 2 * ldc + 0), vb, c2_0 * va).Store(c + 2 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 2 * ldc + 8), vb, c2_1 * va).Store(c + 2 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 3 * ldc + 0), vb, c3_0 * va).Store(c + 3 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 3 * ldc + 8), vb, c3_1 * va).Store(c + 3 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 4 * ldc + 0), vb, c4_0 * va).Store(c + 4 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 4 * ldc + 8), vb, c4_1 * va).Store(c + 4 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 5 * ldc + 0), vb, c5_0 * va).Store(c + 5 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 5 * ldc + 8), vb, c5_1 * va).Store(c + 5 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 6 * ldc + 0), vb, c6_0 * va).Store(c + 6 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 6 * ldc + 8), vb, c6_1 * va).Store(c + 6 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 7 * ldc + 0), vb, c7_0 * va).Store(c + 7 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 7 * ldc + 8), vb, c7_1 * va).Store(c + 7 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 8 * ldc + 0), vb, c8_0 * va).Store(c + 8 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 8 * ldc + 8), vb, c8_1 * va).Store(c + 8 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 9 * ldc + 0), vb, c9_0 * va).Store(c + 9 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 9 * ldc + 8), vb, c9_1 * va).Store(c + 9 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 10 * ldc + 0), vb, c10_0 * va).Store(c + 10 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 10 * ldc + 8), vb, c10_1 * va).Store(c + 10 * ldc + 8);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 11 * ldc + 0), vb, c11_0 * va).Store(c + 11 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 11 * ldc + 8), vb, c11_1 * va).Store(c + 11 * ldc + 8);
        }
    }
}
