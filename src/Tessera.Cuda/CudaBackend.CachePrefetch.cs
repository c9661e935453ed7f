using System.Runtime.InteropServices;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;

namespace Tessera.Cuda;

// The L2 prefetch of the weights read after a decode step's attention, on a stream of its own so that nothing waits for it.
public sealed unsafe partial class CudaBackend
{
    private CudaStream? _prefetchStream;
    private CudaEvent? _prefetchFork, _prefetchDone;

    /// <summary>Whether the graph being recorded forked the prefetch stream and has not joined it yet (a recording must join
    /// every stream it forked before it ends).</summary>
    private bool _prefetchPending;

    /// <inheritdoc/>
    /// <remarks>
    /// With <see cref="CudaBackendOptions.CachePrefetchMegabytes"/> above 0: one launch of <c>prefetch_l2</c> (copy.cu) over
    /// the leading bytes of the first four contiguous, 16-byte aligned tensors in order, up to the budget (at most half the
    /// L2: the ops in between must not evict what it brought), on a stream forked from the main one here, so that the
    /// attention after this call neither waits for it nor is ordered behind it (a kernel in the main stream would hold its
    /// dependents until its prefetches had been served, about as long as reading the bytes). A recording joins that stream
    /// at its end. Bulk prefetches on compute capability 9.0 or later; one a line before it, or with
    /// <see cref="CudaBackendOptions.CachePrefetchByLines"/>.
    /// </remarks>
    public void PrefetchToCache(ReadOnlySpan<Tensor> tensors)
    {
        long budget = Math.Min((long)Options.CachePrefetchMegabytes << 20, CudaDevice.L2CacheBytes / 2L);
        PrefetchRanges ranges = default;
        int count = 0;
        long pieces = 0;
        foreach (var t in tensors)
        {
            if (budget < 16 || count == 4) break;
            ulong p = Ptr(t);
            if (!t.IsContiguous || p % 16 != 0) continue;
            long bytes = Math.Min(t.NumElements * t.DType.SizeInBytes(), budget) & ~15L;   // bulk sizes are multiples of 16
            if (bytes == 0) continue;
            ranges.Pointers[count] = p;
            ranges.Bytes[count++] = bytes;
            budget -= bytes;
            pieces += (bytes + PrefetchPieceBytes - 1) / PrefetchPieceBytes;
        }
        if (count == 0) return;
        int lines = Options.CachePrefetchByLines || CudaDevice.ComputeCapability.Major < 9 ? 1 : 0;
        _prefetchStream ??= new CudaStream(CudaDevice);
        _prefetchFork ??= new CudaEvent(CudaDevice, timing: false);
        _prefetchDone ??= new CudaEvent(CudaDevice, timing: false);
        _prefetchFork.Record(Stream);                     // after what the main stream has so far (the step's QKV product)
        _prefetchStream.Wait(_prefetchFork);
        void** args = stackalloc void*[] { &ranges, &count, &lines };
        uint grid = (uint)Math.Clamp(pieces, 1, CudaDevice.MultiprocessorCount);   // a warp an SM, the pieces spread over them
        Launch("copy.cu", "prefetch_l2", (grid, 1, 1), 32, args, 0, dependent: false, on: _prefetchStream);
        _prefetchDone.Record(_prefetchStream);
        if (_capturing) _prefetchPending = true;         // eager, nothing waits for it
    }

    /// <summary>Makes the main stream wait for the prefetch stream's work so far (a recording's end: capture must join every
    /// stream it forked). The prefetches write nothing, so nothing else needs to wait for them.</summary>
    private void JoinPrefetches()
    {
        if (!_prefetchPending) return;
        Stream.Wait(_prefetchDone!);
        _prefetchPending = false;
    }

    private void DisposePrefetches()
    {
        _prefetchStream?.Synchronize();
        _prefetchStream?.Dispose();
        _prefetchFork?.Dispose();
        _prefetchDone?.Dispose();
    }

    /// <summary>The bytes of one prefetch in <c>prefetch_l2</c>.</summary>
    private const long PrefetchPieceBytes = 16384;

    /// <summary><c>prefetch_l2</c>'s ranges (copy.cu's PrefetchRanges): up to four start addresses and their byte counts.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct PrefetchRanges
    {
        public fixed ulong Pointers[4];
        public fixed long Bytes[4];
    }
}
