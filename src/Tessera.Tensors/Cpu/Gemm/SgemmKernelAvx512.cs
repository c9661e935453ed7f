using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// SGEMM micro-kernel for AVX-512: an 8x48 tile in 24 zmm accumulators (8 divides every GPT-2 row count, 48 every width).
/// </summary>
/// <remarks>Generated shape: 8 rows x 3 vectors of 16 lanes; the broadcast of each packed A element
/// folds into the FMA as an embedded broadcast operand where the JIT can do so.</remarks>
internal readonly unsafe struct SgemmKernelAvx512 : IGemmKernel<float>
{
    public static int MR => 8;
    public static int NR => 48;
    public static int KC => 384;
    public static int MC => 128;
    public static int NC => 768;
    public static bool IsSupported => Avx512F.IsSupported;

    /// <summary>Computes one 8x48 tile: C = alpha * Ap Bp + beta C (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(int kc, float* a, float* b, float* c, long ldc, float alpha, float beta)
    {
        Vector512<float> c0_0 = default; Vector512<float> c0_1 = default; Vector512<float> c0_2 = default;
        Vector512<float> c1_0 = default; Vector512<float> c1_1 = default; Vector512<float> c1_2 = default;
        Vector512<float> c2_0 = default; Vector512<float> c2_1 = default; Vector512<float> c2_2 = default;
        Vector512<float> c3_0 = default; Vector512<float> c3_1 = default; Vector512<float> c3_2 = default;
        Vector512<float> c4_0 = default; Vector512<float> c4_1 = default; Vector512<float> c4_2 = default;
        Vector512<float> c5_0 = default; Vector512<float> c5_1 = default; Vector512<float> c5_2 = default;
        Vector512<float> c6_0 = default; Vector512<float> c6_1 = default; Vector512<float> c6_2 = default;
        Vector512<float> c7_0 = default; Vector512<float> c7_1 = default; Vector512<float> c7_2 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.LoadAligned(b + 0);
            Vector512<float> b1 = Vector512.LoadAligned(b + 16);
            Vector512<float> b2 = Vector512.LoadAligned(b + 32);
            c0_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[0]), b0, c0_0);
            c0_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[0]), b1, c0_1);
            c0_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[0]), b2, c0_2);
            c1_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[1]), b0, c1_0);
            c1_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[1]), b1, c1_1);
            c1_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[1]), b2, c1_2);
            c2_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[2]), b0, c2_0);
            c2_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[2]), b1, c2_1);
            c2_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[2]), b2, c2_2);
            c3_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[3]), b0, c3_0);
            c3_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[3]), b1, c3_1);
            c3_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[3]), b2, c3_2);
            c4_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[4]), b0, c4_0);
            c4_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[4]), b1, c4_1);
            c4_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[4]), b2, c4_2);
            c5_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[5]), b0, c5_0);
            c5_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[5]), b1, c5_1);
            c5_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[5]), b2, c5_2);
            c6_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[6]), b0, c6_0);
            c6_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[6]), b1, c6_1);
            c6_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[6]), b2, c6_2);
            c7_0 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[7]), b0, c7_0);
            c7_1 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[7]), b1, c7_1);
            c7_2 = Avx512F.FusedMultiplyAdd(Vector512.Create(a[7]), b2, c7_2);
            a += 8;
            b += 48;
        }
        Vector512<float> va = Vector512.Create(alpha);
        if (beta == 0)
        {
            (c0_0 * va).Store(c + 0 * ldc + 0);
            (c0_1 * va).Store(c + 0 * ldc + 16);
            (c0_2 * va).Store(c + 0 * ldc + 32);
            (c1_0 * va).Store(c + 1 * ldc + 0);
            (c1_1 * va).Store(c + 1 * ldc + 16);
            (c1_2 * va).Store(c + 1 * ldc + 32);
            (c2_0 * va).Store(c + 2 * ldc + 0);
            (c2_1 * va).Store(c + 2 * ldc + 16);
            (c2_2 * va).Store(c + 2 * ldc + 32);
            (c3_0 * va).Store(c + 3 * ldc + 0);
            (c3_1 * va).Store(c + 3 * ldc + 16);
            (c3_2 * va).Store(c + 3 * ldc + 32);
            (c4_0 * va).Store(c + 4 * ldc + 0);
            (c4_1 * va).Store(c + 4 * ldc + 16);
            (c4_2 * va).Store(c + 4 * ldc + 32);
            (c5_0 * va).Store(c + 5 * ldc + 0);
            (c5_1 * va).Store(c + 5 * ldc + 16);
            (c5_2 * va).Store(c + 5 * ldc + 32);
            (c6_0 * va).Store(c + 6 * ldc + 0);
            (c6_1 * va).Store(c + 6 * ldc + 16);
            (c6_2 * va).Store(c + 6 * ldc + 32);
            (c7_0 * va).Store(c + 7 * ldc + 0);
            (c7_1 * va).Store(c + 7 * ldc + 16);
            (c7_2 * va).Store(c + 7 * ldc + 32);
        }
        else
        {
            Vector512<float> vb = Vector512.Create(beta);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 0 * ldc + 0), vb, c0_0 * va).Store(c + 0 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 0 * ldc + 16), vb, c0_1 * va).Store(c + 0 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 0 * ldc + 32), vb, c0_2 * va).Store(c + 0 * ldc + 32);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 1 * ldc + 0), vb, c1_0 * va).Store(c + 1 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 1 * ldc + 16), vb, c1_1 * va).Store(c + 1 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 1 * ldc + 32), vb, c1_2 * va).Store(c + 1 * ldc + 32);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 2 * ldc + 0), vb, c2_0 * va).Store(c + 2 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 2 * ldc + 16), vb, c2_1 * va).Store(c + 2 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 2 * ldc + 32), vb, c2_2 * va).Store(c + 2 * ldc + 32);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 3 * ldc + 0), vb, c3_0 * va).Store(c + 3 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 3 * ldc + 16), vb, c3_1 * va).Store(c + 3 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 3 * ldc + 32), vb, c3_2 * va).Store(c + 3 * ldc + 32);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 4 * ldc + 0), vb, c4_0 * va).Store(c + 4 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 4 * ldc + 16), vb, c4_1 * va).Store(c + 4 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 4 * ldc + 32), vb, c4_2 * va).Store(c + 4 * ldc + 32);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 5 * ldc + 0), vb, c5_0 * va).Store(c + 5 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 5 * ldc + 16), vb, c5_1 * va).Store(c + 5 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 5 * ldc + 32), vb, c5_2 * va).Store(c + 5 * ldc + 32);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 6 * ldc + 0), vb, c6_0 * va).Store(c + 6 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 6 * ldc + 16), vb, c6_1 * va).Store(c + 6 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 6 * ldc + 32), vb, c6_2 * va).Store(c + 6 * ldc + 32);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 7 * ldc + 0), vb, c7_0 * va).Store(c + 7 * ldc + 0);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 7 * ldc + 16), vb, c7_1 * va).Store(c + 7 * ldc + 16);
            Avx512F.FusedMultiplyAdd(Vector512.Load(c + 7 * ldc + 32), vb, c7_2 * va).Store(c + 7 * ldc + 32);
        }
    }
}
