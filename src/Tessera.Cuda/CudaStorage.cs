using Tessera.Cuda.Runtime;
using Tessera.Tensors;

namespace Tessera.Cuda;

/// <summary>Device memory from a <see cref="CudaAllocator"/>; returned to it (stream-ordered) on dispose.</summary>
public sealed class CudaStorage : Storage
{
    private readonly CudaAllocator _allocator;
    private ulong _pointer;

    internal CudaStorage(CudaBackend backend, CudaAllocator allocator, DType dtype, long length)
        : base(backend, dtype, length)
    {
        _allocator = allocator;
        _pointer = allocator.Allocate(ByteLength);
    }

    /// <summary>Device address of element 0.</summary>
    internal ulong Pointer => _pointer != 0 ? _pointer : throw new ObjectDisposedException(nameof(CudaStorage));

    public override void Dispose()
    {
        if (_pointer == 0) return;
        _allocator.Free(_pointer);
        _pointer = 0;
    }
}
