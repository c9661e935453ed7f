using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda;

/// <summary>
/// Pinned host memory that the backend's stream copies I32 values into (cuMemcpyDtoHAsync), with an event recorded behind
/// the copy: <see cref="Start"/> returns at once, <see cref="Wait"/> waits for that event only, not for work enqueued later.
/// </summary>
public sealed unsafe class CudaReadbackBuffer : IReadbackBuffer
{
    private readonly CudaBackend _backend;
    private readonly CudaEvent _landed;
    private int* _host;
    private int _count;
    private bool _pending;

    internal CudaReadbackBuffer(CudaBackend backend, int capacity)
    {
        if (capacity <= 0) throw new ArgumentException($"CudaReadbackBuffer: capacity ({capacity}) must be positive");
        _backend = backend;
        Capacity = capacity;
        backend.CudaDevice.MakeCurrent();
        void* p;
        Check(cuMemHostAlloc(&p, (nuint)capacity * sizeof(int), CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc", $"{capacity * sizeof(int)} bytes of pinned host memory");
        _host = (int*)p;
        _landed = new CudaEvent(backend.CudaDevice, timing: false);
    }

    public int Capacity { get; }

    public void Start(Tensor source)
    {
        ObjectDisposedException.ThrowIf(_host == null, this);
        ArgumentNullException.ThrowIfNull(source);
        if (source.DType != DType.I32 || !source.IsContiguous || source.NumElements > Capacity)
            throw new ArgumentException($"CudaReadbackBuffer.Start: source must be contiguous I32 of at most {Capacity} values, got {source.Shape} {source.DType}");
        _backend.RefuseWhileCapturing("CudaReadbackBuffer.Start");
        if (_pending) _landed.Synchronize();                     // the previous copy still writes this memory
        _backend.CudaDevice.MakeCurrent();
        _count = (int)source.NumElements;
        if (_count > 0)
            Check(cuMemcpyDtoHAsync(_host, CudaBackend.Ptr(source), (nuint)_count * sizeof(int), _backend.Stream.Handle), "cuMemcpyDtoHAsync");
        _landed.Record(_backend.Stream);
        _pending = true;
    }

    public ReadOnlySpan<int> Wait()
    {
        ObjectDisposedException.ThrowIf(_host == null, this);
        if (_pending) _landed.Synchronize();
        _pending = false;
        return new ReadOnlySpan<int>(_host, _count);
    }

    public void Dispose()
    {
        if (_host == null) return;
        if (_pending) _landed.Synchronize();
        _landed.Dispose();
        _backend.CudaDevice.MakeCurrent();
        cuMemFreeHost(_host);
        _host = null;
    }
}
