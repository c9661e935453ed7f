using System.Runtime.InteropServices;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// One 64-byte aligned native scratch block per thread for packed GEMM panels, grown on demand and
/// reused by every later call on that thread, so the steady state allocates nothing. The block is freed
/// by the finalizer once its thread has ended and nothing else refers to it.
/// </summary>
internal sealed unsafe class PackingBuffer
{
    // Thread-local by design: each GEMM worker packs into its own panels, never shared.
    [ThreadStatic]
    private static PackingBuffer? t_buffer;

    private void* _data;
    private nuint _bytes;

    private PackingBuffer()
    {
    }

    ~PackingBuffer()
    {
        NativeMemory.AlignedFree(_data);
    }

    /// <summary>This thread's scratch block of at least <paramref name="bytes"/> bytes, 64-byte aligned.</summary>
    public static void* ForCurrentThread(nuint bytes)
    {
        PackingBuffer buffer = t_buffer ??= new PackingBuffer();
        if (buffer._bytes < bytes)
        {
            NativeMemory.AlignedFree(buffer._data);
            buffer._data = null;
            buffer._bytes = 0;
            buffer._data = NativeMemory.AlignedAlloc(bytes, 64);
            buffer._bytes = bytes;
        }
        return buffer._data;
    }
}
