namespace Tessera.Tensors.Cpu;

/// <summary>
/// The host backend: vectorized (Vector512/Vector256 where the CPU has them), multi-threaded,
/// synchronous (every op has finished when it returns). F32 and F64 compute; BF16/F16 as storage.
/// </summary>
public sealed partial class CpuBackend : IBackend
{
    /// <summary>Creates a backend that uses up to <paramref name="threads"/> threads (default: all cores).</summary>
    public CpuBackend(int? threads = null)
    {
        Threads = Math.Max(1, threads ?? Environment.ProcessorCount);
    }

    /// <summary>Number of threads an op may use.</summary>
    public int Threads { get; }

    public Device Device => Device.Cpu;

    public Tensor Allocate(Shape shape, DType dtype) => new(new CpuStorage(this, dtype, shape.NumElements), shape);

    private long _allocatedBytes, _peakAllocatedBytes;

    /// <summary>
    /// Bytes of this backend's storages that are allocated now (freed ones subtract at <see cref="Storage.Dispose"/>, or at
    /// finalization for one never disposed, so an abandoned buffer counts until the garbage collector finalizes it).
    /// </summary>
    public long AllocatedBytes => Interlocked.Read(ref _allocatedBytes);

    /// <summary>The largest <see cref="AllocatedBytes"/> since the backend was created or <see cref="ResetPeakAllocatedBytes"/> (what a device's allocator would have had to hold).</summary>
    public long PeakAllocatedBytes => Interlocked.Read(ref _peakAllocatedBytes);

    /// <summary>Restarts <see cref="PeakAllocatedBytes"/> from the bytes allocated now.</summary>
    public void ResetPeakAllocatedBytes() => Interlocked.Exchange(ref _peakAllocatedBytes, AllocatedBytes);

    internal void OnAllocated(long bytes)
    {
        long now = Interlocked.Add(ref _allocatedBytes, bytes);
        for (long peak = Interlocked.Read(ref _peakAllocatedBytes); now > peak; peak = Interlocked.Read(ref _peakAllocatedBytes))
            if (Interlocked.CompareExchange(ref _peakAllocatedBytes, now, peak) == peak) break;
    }

    internal void OnFreed(long bytes) => Interlocked.Add(ref _allocatedBytes, -bytes);

    public void Synchronize() { }
}
