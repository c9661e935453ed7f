namespace Tessera.Tensors;

/// <summary>
/// A flat buffer of elements owned by one backend. Tensors are views (shape, strides, offset)
/// over a storage; several tensors may share one storage (arenas, slices, KV caches).
/// Only the owning backend reads or writes the memory.
/// </summary>
public abstract class Storage : IDisposable
{
    protected Storage(IBackend backend, DType dtype, long length)
    {
        Backend = backend;
        DType = dtype;
        Length = length;
    }

    /// <summary>The backend that allocated this storage and computes on it.</summary>
    public IBackend Backend { get; }

    /// <summary>Element type.</summary>
    public DType DType { get; }

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>Size in bytes.</summary>
    public long ByteLength => Length * DType.SizeInBytes();

    /// <summary>Where the memory lives.</summary>
    public Device Device => Backend.Device;

    /// <summary>Returns the memory to its allocator.</summary>
    public abstract void Dispose();
}
