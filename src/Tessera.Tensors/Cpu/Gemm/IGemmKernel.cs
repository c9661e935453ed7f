namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// A register-blocked micro-kernel and the cache blocking that feeds it. The driver
/// (<see cref="GemmDriver{T, TKernel}"/>) is specialised per kernel (struct generic), so these
/// members are compile-time constants for the JIT.
/// </summary>
/// <remarks>
/// Packed layouts the kernel reads: A micro-panel <c>(KC, MR)</c> (for each k, MR consecutive rows),
/// B micro-panel <c>(KC, NR)</c> (for each k, NR consecutive columns), both 64-byte aligned.
/// </remarks>
internal unsafe interface IGemmKernel<T> where T : unmanaged
{
    /// <summary>Rows of C per micro-tile.</summary>
    static abstract int MR { get; }

    /// <summary>Columns of C per micro-tile.</summary>
    static abstract int NR { get; }

    /// <summary>Depth of one packed panel (the k block); longer blocks amortise C loads and stores.</summary>
    static abstract int KC { get; }

    /// <summary>Rows of the packed A block (a multiple of MR); sized so the block stays in L2.</summary>
    static abstract int MC { get; }

    /// <summary>Columns of the packed B block (a multiple of NR); L2/L3-resident, tuned by measurement.</summary>
    static abstract int NC { get; }

    /// <summary>Whether this CPU can run the kernel.</summary>
    static abstract bool IsSupported { get; }

    /// <summary>
    /// C (MR, NR) with row stride <paramref name="ldc"/> = alpha * Ap (MR, kc) @ Bp (kc, NR) + beta * C;
    /// beta == 0 must not read C.
    /// </summary>
    static abstract void Run(int kc, T* a, T* b, T* c, long ldc, T alpha, T beta);
}
