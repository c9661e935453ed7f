using System.Runtime.InteropServices;

namespace Tessera.Tensors.Cpu;

/// <summary>Host memory, 64-byte aligned (one cache line, one AVX-512 vector), zero-initialized.</summary>
public sealed unsafe class CpuStorage : Storage
{
    private void* _pointer;

    internal CpuStorage(CpuBackend backend, DType dtype, long length) : base(backend, dtype, length)
    {
        nuint bytes = (nuint)Math.Max(ByteLength, 1);
        try
        {
            _pointer = NativeMemory.AlignedAlloc(bytes, 64);
        }
        catch (OutOfMemoryException)
        {
            throw new OutOfMemoryException($"host allocation of {ByteLength:N0} bytes ({length:N0} x {dtype}) failed");
        }
        NativeMemory.Clear(_pointer, bytes);
        if (ByteLength > 0) GC.AddMemoryPressure(ByteLength);
        backend.OnAllocated(ByteLength);
    }

    /// <summary>Address of element 0; valid until disposed.</summary>
    internal void* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(CpuStorage));

    /// <summary>The elements as a span of <typeparamref name="T"/> (whose size must match the dtype).</summary>
    internal Span<T> AsSpan<T>() where T : unmanaged
    {
        if (sizeof(T) != DType.SizeInBytes())
            throw new InvalidOperationException($"cannot view {DType} storage as {typeof(T).Name}");
        return new Span<T>(Pointer, checked((int)Length));
    }

    public override void Dispose()
    {
        if (_pointer != null)
        {
            NativeMemory.AlignedFree(_pointer);
            _pointer = null;
            if (ByteLength > 0) GC.RemoveMemoryPressure(ByteLength);
            ((CpuBackend)Backend).OnFreed(ByteLength);
        }
        GC.SuppressFinalize(this);
    }

    ~CpuStorage() => Dispose();
}
