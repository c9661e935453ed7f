using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// SGEMM micro-kernel for AVX2+FMA: a 6x16 tile in 12 ymm accumulators.
/// </summary>
/// <remarks>Generated shape: 6 rows x 2 vectors of 8 lanes; the broadcast of each packed A element
/// is a broadcast load feeding the FMAs.</remarks>
internal readonly unsafe struct SgemmKernelAvx2 : IGemmKernel<float>
{
    public static int MR => 6;
    public static int NR => 16;
    public static int KC => 256;
    public static int MC => 144;
    public static int NC => 3072;
    public static bool IsSupported => Fma.IsSupported && Avx2.IsSupported;

    /// <summary>Computes one 6x16 tile: C = alpha * Ap Bp + beta C (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(int kc, float* a, float* b, float* c, long ldc, float alpha, float beta)
    {
        Vector256<float> c0_0 = default; Vector256<float> c0_1 = default;
        Vector256<float> c1_0 = default; Vector256<float> c1_1 = default;
        Vector256<float> c2_0 = default; Vector256<float> c2_1 = default;
        Vector256<float> c3_0 = default; Vector256<float> c3_1 = default;
        Vector256<float> c4_0 = default; Vector256<float> c4_1 = default;
        Vector256<float> c5_0 = default; Vector256<float> c5_1 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.LoadAligned(b + 0);
            Vector256<float> b1 = Vector256.LoadAligned(b + 8);
            c0_0 = Fma.MultiplyAdd(Vector256.Create(a[0]), b0, c0_0);
            c0_1 = Fma.MultiplyAdd(Vector256.Create(a[0]), b1, c0_1);
            c1_0 = Fma.MultiplyAdd(Vector256.Create(a[1]), b0, c1_0);
            c1_1 = Fma.MultiplyAdd(Vector256.Create(a[1]), b1, c1_1);
            c2_0 = Fma.MultiplyAdd(Vector256.Create(a[2]), b0, c2_0);
            c2_1 = Fma.MultiplyAdd(Vector256.Create(a[2]), b1, c2_1);
            c3_0 = Fma.MultiplyAdd(Vector256.Create(a[3]), b0, c3_0);
            c3_1 = Fma.MultiplyAdd(Vector256.Create(a[3]), b1, c3_1);
            c4_0 = Fma.MultiplyAdd(Vector256.Create(a[4]), b0, c4_0);
            c4_1 = Fma.MultiplyAdd(Vector256.Create(a[4]), b1, c4_1);
            c5_0 = Fma.MultiplyAdd(Vector256.Create(a[5]), b0, c5_0);
            c5_1 = Fma.MultiplyAdd(Vector256.Create(a[5]), b1, c5_1);
            a += 6;
            b += 16;
        }
        Vector256<float> va = Vector256.Create(alpha);
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
        }
        else
        {
            Vector256<float> vb = Vector256.Create(beta);
            Fma.MultiplyAdd(Vector256.Load(c + 0 * ldc + 0), vb, c0_0 * va).Store(c + 0 * ldc + 0);
            Fma.MultiplyAdd(Vector256.Load(c + 0 * ldc + 8), vb, c0_1 * va).Store(c + 0 * ldc + 8);
            Fma.MultiplyAdd(Vector256.Load(c + 1 * ldc + 0), vb, c1_0 * va).Store(c + 1 * ldc + 0);
            Fma.MultiplyAdd(Vector256.Load(c + 1 * ldc + 8), vb, c1_1 * va).Store(c + 1 * ldc + 8);
            Fma.MultiplyAdd(Vector256.Load(c + 2 * ldc + 0), vb, c2_0 * va).Store(c + 2 * ldc + 0);
            Fma.MultiplyAdd(Vector256.Load(c + 2 * ldc + 8), vb, c2_1 * va).Store(c + 2 * ldc + 8);
            Fma.MultiplyAdd(Vector256.Load(c + 3 * ldc + 0), vb, c3_0 * va).Store(c + 3 * ldc + 0);
            Fma.MultiplyAdd(Vector256.Load(c + 3 * ldc + 8), vb, c3_1 * va).Store(c + 3 * ldc + 8);
            Fma.MultiplyAdd(Vector256.Load(c + 4 * ldc + 0), vb, c4_0 * va).Store(c + 4 * ldc + 0);
            Fma.MultiplyAdd(Vector256.Load(c + 4 * ldc + 8), vb, c4_1 * va).Store(c + 4 * ldc + 8);
            Fma.MultiplyAdd(Vector256.Load(c + 5 * ldc + 0), vb, c5_0 * va).Store(c + 5 * ldc + 0);
            Fma.MultiplyAdd(Vector256.Load(c + 5 * ldc + 8), vb, c5_1 * va).Store(c + 5 * ldc + 8);
        }
    }
}
