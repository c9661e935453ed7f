using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// In-register transposes of float tiles, used by <see cref="GemmPacking"/> for the strided packing
/// cases (row-major A into column-ordered micro-panels, transposed B into row-ordered micro-panels).
/// </summary>
internal static unsafe class GemmTranspose
{
    /// <summary>
    /// dst[c * ldd + r] = src[r * lds + c] for an 8x8 tile (AVX): unpack pairs of rows, then
    /// 64-bit shuffles, then 128-bit lane exchange.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Transpose8x8(float* src, long lds, float* dst, long ldd)
    {
        Vector256<float> r0 = Avx.LoadVector256(src), r1 = Avx.LoadVector256(src + lds);
        Vector256<float> r2 = Avx.LoadVector256(src + 2 * lds), r3 = Avx.LoadVector256(src + 3 * lds);
        Vector256<float> r4 = Avx.LoadVector256(src + 4 * lds), r5 = Avx.LoadVector256(src + 5 * lds);
        Vector256<float> r6 = Avx.LoadVector256(src + 6 * lds), r7 = Avx.LoadVector256(src + 7 * lds);
        Vector256<float> t0 = Avx.UnpackLow(r0, r1), t1 = Avx.UnpackHigh(r0, r1);
        Vector256<float> t2 = Avx.UnpackLow(r2, r3), t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5), t5 = Avx.UnpackHigh(r4, r5);
        Vector256<float> t6 = Avx.UnpackLow(r6, r7), t7 = Avx.UnpackHigh(r6, r7);
        Vector256<float> s0 = Avx.Shuffle(t0, t2, 0x44), s1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> s2 = Avx.Shuffle(t1, t3, 0x44), s3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> s4 = Avx.Shuffle(t4, t6, 0x44), s5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> s6 = Avx.Shuffle(t5, t7, 0x44), s7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(dst, Avx.Permute2x128(s0, s4, 0x20));
        Avx.Store(dst + ldd, Avx.Permute2x128(s1, s5, 0x20));
        Avx.Store(dst + 2 * ldd, Avx.Permute2x128(s2, s6, 0x20));
        Avx.Store(dst + 3 * ldd, Avx.Permute2x128(s3, s7, 0x20));
        Avx.Store(dst + 4 * ldd, Avx.Permute2x128(s0, s4, 0x31));
        Avx.Store(dst + 5 * ldd, Avx.Permute2x128(s1, s5, 0x31));
        Avx.Store(dst + 6 * ldd, Avx.Permute2x128(s2, s6, 0x31));
        Avx.Store(dst + 7 * ldd, Avx.Permute2x128(s3, s7, 0x31));
    }

    /// <summary>
    /// dst[c * ldd + r] = src[r * lds + c] for a 16x16 tile (AVX-512): 32-bit and 64-bit unpacks inside
    /// 128-bit lanes, then two rounds of 128-bit lane shuffles.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Transpose16x16(float* src, long lds, float* dst, long ldd)
    {
        // Stage 1+2 per group of four rows: u[q] holds, in 128-bit lane L, rows 4g..4g+3 of column q + 4L.
        Group(src, lds, out var u0, out var u1, out var u2, out var u3);
        Group(src + 4 * lds, lds, out var u4, out var u5, out var u6, out var u7);
        Group(src + 8 * lds, lds, out var u8, out var u9, out var u10, out var u11);
        Group(src + 12 * lds, lds, out var u12, out var u13, out var u14, out var u15);
        Finish(u0, u4, u8, u12, dst, ldd);
        Finish(u1, u5, u9, u13, dst + ldd, ldd);
        Finish(u2, u6, u10, u14, dst + 2 * ldd, ldd);
        Finish(u3, u7, u11, u15, dst + 3 * ldd, ldd);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Group(float* src, long lds, out Vector512<float> u0, out Vector512<float> u1,
        out Vector512<float> u2, out Vector512<float> u3)
    {
        Vector512<float> a = Vector512.Load(src), b = Vector512.Load(src + lds);
        Vector512<float> c = Vector512.Load(src + 2 * lds), d = Vector512.Load(src + 3 * lds);
        Vector512<double> t0 = Avx512F.UnpackLow(a, b).AsDouble(), t1 = Avx512F.UnpackHigh(a, b).AsDouble();
        Vector512<double> t2 = Avx512F.UnpackLow(c, d).AsDouble(), t3 = Avx512F.UnpackHigh(c, d).AsDouble();
        u0 = Avx512F.UnpackLow(t0, t2).AsSingle();
        u1 = Avx512F.UnpackHigh(t0, t2).AsSingle();
        u2 = Avx512F.UnpackLow(t1, t3).AsSingle();
        u3 = Avx512F.UnpackHigh(t1, t3).AsSingle();
    }

    // Column q of the tile: rows from groups 0..3 (u0g, u1g, u2g, u3g), written to dst (lane 0), +4, +8, +12 rows.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish(Vector512<float> g0, Vector512<float> g1, Vector512<float> g2, Vector512<float> g3,
        float* dst, long ldd)
    {
        Vector512<float> x01 = Avx512F.Shuffle4x128(g0, g1, 0x44), x23 = Avx512F.Shuffle4x128(g0, g1, 0xEE);
        Vector512<float> y01 = Avx512F.Shuffle4x128(g2, g3, 0x44), y23 = Avx512F.Shuffle4x128(g2, g3, 0xEE);
        Avx512F.Shuffle4x128(x01, y01, 0x88).Store(dst);
        Avx512F.Shuffle4x128(x01, y01, 0xDD).Store(dst + 4 * ldd);
        Avx512F.Shuffle4x128(x23, y23, 0x88).Store(dst + 8 * ldd);
        Avx512F.Shuffle4x128(x23, y23, 0xDD).Store(dst + 12 * ldd);
    }
}
