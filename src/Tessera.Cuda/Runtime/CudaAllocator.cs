using Tessera.Cuda.Interop;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda.Runtime;

/// <summary>
/// A stream-ordered caching allocator over the device's default memory pool (cuMemAllocAsync /
/// cuMemFreeAsync). The pool's release threshold is raised to "keep everything", so freed blocks
/// stay cached in the pool and later allocations on the same stream reuse them without a device
/// synchronization. Tracks bytes in use and the peak. Thread-safe.
/// </summary>
public sealed unsafe class CudaAllocator : IDisposable
{
    private readonly CudaDevice _device;
    private readonly CudaStream _stream;
    private readonly IntPtr _pool;
    private readonly Dictionary<ulong, long> _live = new();
    private readonly Lock _lock = new();
    private long _inUse, _peak, _total;
    private bool _disposed;

    /// <summary>An allocator whose allocations and frees are ordered on <paramref name="stream"/>.</summary>
    public CudaAllocator(CudaDevice device, CudaStream stream)
    {
        _device = device;
        _stream = stream;
        device.MakeCurrent();
        IntPtr pool;
        Check(cuDeviceGetDefaultMemPool(&pool, device.Handle), "cuDeviceGetDefaultMemPool");
        ulong keepAll = ulong.MaxValue;
        Check(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keepAll), "cuMemPoolSetAttribute(RELEASE_THRESHOLD)");
        _pool = pool;
    }

    /// <summary>Current and peak use.</summary>
    public CudaMemoryStatistics Statistics
    {
        get { lock (_lock) return new(_inUse, _peak, _live.Count, _total); }
    }

    /// <summary>Starts a new peak measurement from the current use.</summary>
    public void ResetPeak() { lock (_lock) _peak = _inUse; }

    /// <summary>
    /// Allocates <paramref name="bytes"/> (at least 1) ordered on the stream. On failure it trims
    /// the pool's cache, retries once, then throws <see cref="CudaOutOfMemoryException"/> with the
    /// request size and the allocator's statistics.
    /// </summary>
    public ulong Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _device.MakeCurrent();
        nuint size = (nuint)Math.Max(bytes, 1);
        ulong pointer;
        int status = cuMemAllocAsync(&pointer, size, _stream.Handle);
        if (status == CUDA_ERROR_OUT_OF_MEMORY)
        {
            // Cached blocks held for other streams can be returned once the device is idle.
            Check(cuStreamSynchronize(_stream.Handle), "cuStreamSynchronize");
            Check(cuMemPoolTrimTo(_pool, 0), "cuMemPoolTrimTo");
            status = cuMemAllocAsync(&pointer, size, _stream.Handle);
        }
        if (status == CUDA_ERROR_OUT_OF_MEMORY)
        {
            var s = Statistics;
            var (free, total) = _device.MemoryInfo();
            throw new CudaOutOfMemoryException(
                $"{_device.Name}: cannot allocate {Format(bytes)}; this allocator has {Format(s.BytesInUse)} in use in {s.Allocations} allocations " +
                $"(peak {Format(s.PeakBytesInUse)}); the device has {Format(free)} free of {Format(total)}. Reduce the batch size or sequence length, or free tensors sooner.",
                Error(status, "cuMemAllocAsync"));
        }
        Check(status, "cuMemAllocAsync", $"{bytes} bytes");
        lock (_lock)
        {
            _live[pointer] = bytes;
            _inUse += bytes;
            _total++;
            if (_inUse > _peak) _peak = _inUse;
        }
        return pointer;
    }

    /// <summary>Returns an allocation to the pool, ordered after the work already on the stream.</summary>
    public void Free(ulong pointer)
    {
        long bytes;
        lock (_lock)
        {
            if (_disposed) return; // everything was returned when the allocator was disposed
            if (!_live.Remove(pointer, out bytes))
                throw new InvalidOperationException($"device pointer 0x{pointer:x} was not allocated by this allocator or was freed twice");
            _inUse -= bytes;
        }
        _device.MakeCurrent();
        Check(cuMemFreeAsync(pointer, _stream.Handle), "cuMemFreeAsync");
    }

    /// <summary>The device pointers allocated and not yet freed.</summary>
    internal HashSet<ulong> LivePointers()
    {
        lock (_lock) return [.. _live.Keys];
    }

    /// <summary>
    /// Drops the bookkeeping of allocations that belong to a discarded graph recording (they were graph allocation nodes,
    /// never real memory, and freeing them would fail): every live pointer not in <paramref name="before"/>.
    /// </summary>
    internal void ForgetAllocationsSince(HashSet<ulong> before)
    {
        lock (_lock)
        {
            foreach (var p in _live.Keys.Where(k => !before.Contains(k)).ToList())
            {
                _inUse -= _live[p];
                _live.Remove(p);
            }
        }
    }

    /// <summary>Frees every live allocation and waits for the stream.</summary>
    public void Dispose()
    {
        ulong[] pointers;
        lock (_lock) pointers = _live.Keys.ToArray();
        foreach (var p in pointers) Free(p);
        _stream.Synchronize();
        lock (_lock) _disposed = true;
    }

    internal static string Format(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} bytes",
    };
}
