using System.Numerics;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>Portable 4x4 micro-kernel for CPUs without AVX2/FMA or AVX-512.</summary>
internal readonly unsafe struct ScalarGemmKernel<T> : IGemmKernel<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    public static int MR => 4;
    public static int NR => 4;
    public static int KC => 256;
    public static int MC => 128;
    public static int NC => 2048;
    public static bool IsSupported => true;

    public static void Run(int kc, T* a, T* b, T* c, long ldc, T alpha, T beta)
    {
        T* acc = stackalloc T[16];
        for (int i = 0; i < 16; i++) acc[i] = T.Zero;
        for (int p = 0; p < kc; p++)
        {
            for (int i = 0; i < 4; i++)
            {
                T ai = a[i];
                acc[i * 4 + 0] += ai * b[0];
                acc[i * 4 + 1] += ai * b[1];
                acc[i * 4 + 2] += ai * b[2];
                acc[i * 4 + 3] += ai * b[3];
            }
            a += 4;
            b += 4;
        }
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
            {
                T v = alpha * acc[i * 4 + j];
                c[i * ldc + j] = beta == T.Zero ? v : v + beta * c[i * ldc + j];
            }
    }
}
