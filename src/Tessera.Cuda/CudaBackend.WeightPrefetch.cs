using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda;

// The decode products' weights brought into L2 beside them (CudaBackendOptions.DecodeWeightPrefetch). A 64-row product through
// cuBLASLt reads its 8-67 MB weight with 40-116 CTAs at 1.0-3.0 TB/s (docs/benchmarks.md, session 20): too few loads in
// flight for the copy bandwidth. A kernel on a side stream, forked from the main stream just before the product (or before
// the RMSNorm kernel that is the product's own), asks the copy engine for the whole weight in bulk L2 prefetches and ends;
// the main stream waits for that kernel (which only issues requests) right after the product's launch, so a recorded
// CUDA graph holds the fork and the join like any other edge.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Rows of x up to which a product counts as a decode step's (as the timed choice's decode range).</summary>
    private const int WeightPrefetchMaxRows = 256;

    /// <summary>Bytes each prefetching thread asks for at once.</summary>
    private const uint WeightPrefetchChunk = 16384;

    private CudaStream? _prefetchStream;
    private CudaEvent? _prefetchFork, _prefetchJoin;
    private bool _prefetchOpen;

    /// <summary>Weight prefetches forked so far (for tests: each is one side-stream kernel per weight).</summary>
    internal long WeightPrefetches { get; private set; }

    /// <summary>
    /// Forks the prefetch of <paramref name="weight"/> (and <paramref name="second"/>; each (N, K) with unit column stride) when a product of
    /// <paramref name="rows"/> rows of x is about to read them and <see cref="CudaBackendOptions.DecodeWeightPrefetch"/> applies;
    /// true when it did, and the caller then calls <see cref="JoinWeightPrefetch"/> after the product's launch. False (nothing
    /// enqueued) outside an inference scope, above the decode rows, under the op profiler, before sm_90, while a prefetch is
    /// already open (an outer op's, for the same product), or when no weight fits <see cref="CudaBackendOptions.DecodeWeightPrefetchMaxMiB"/>.
    /// </summary>
    private bool ForkWeightPrefetch(int rows, Tensor weight, Tensor? second = null)
    {
        if (!Options.DecodeWeightPrefetch || _prefetchOpen || _inferenceDepth == 0 || rows > WeightPrefetchMaxRows || Profiler is not null
            || CudaDevice.ComputeCapability.Major < 9)
            return false;
        long most = (long)Options.DecodeWeightPrefetchMaxMiB << 20;
        var ranges = new List<(ulong Pointer, ulong Bytes)>(2);
        Tensor[] weights = second is null ? [weight] : [weight, second];
        foreach (var w in weights)
        {
            if (w.Rank != 2 || w.Stride(1) != 1 || w.Size(0) == 0) continue;
            long bytes = ((long)(w.Size(0) - 1) * w.Stride(0) + w.Size(1)) * w.DType.SizeInBytes();
            ulong pointer = Ptr(w);
            if (pointer % 16 != 0) continue;
            if (ranges.Count == 1 && ranges[0].Pointer + ranges[0].Bytes == pointer)
                ranges[0] = (ranges[0].Pointer, ranges[0].Bytes + (ulong)bytes);                 // [gate; up] adjacent: one range
            else ranges.Add((pointer, (ulong)bytes));
        }
        ranges.RemoveAll(r => (long)r.Bytes > most);
        if (ranges.Count == 0) return false;
        CudaDevice.MakeCurrent();
        _prefetchStream ??= new CudaStream(CudaDevice);
        _prefetchFork ??= new CudaEvent(CudaDevice, timing: false);
        _prefetchJoin ??= new CudaEvent(CudaDevice, timing: false);
        _prefetchFork.Record(Stream);
        _prefetchStream.Wait(_prefetchFork);
        var function = Kernels.Module("copy.cu").Function("prefetch_l2");
        ulong p = 0, n = 0;
        uint chunk = WeightPrefetchChunk;
        void** args = stackalloc void*[] { &p, &n, &chunk };
        foreach (var (pointer, bytes) in ranges)
        {
            (p, n) = (pointer, bytes);
            uint threads = 128, ctas = (uint)Math.Clamp((long)((n + chunk - 1) / chunk + threads - 1) / threads, 1, CudaDevice.MultiprocessorCount);
            Check(cuLaunchKernel(function, ctas, 1, 1, threads, 1, 1, 0, _prefetchStream.Handle, args, null),
                "cuLaunchKernel", $"prefetch_l2 in copy.cu, {ctas} CTAs, {n} bytes");
            WeightPrefetches++;
        }
        _prefetchJoin.Record(_prefetchStream);
        _prefetchOpen = true;
        return true;
    }

    /// <summary>Makes the main stream wait for the side stream's prefetch kernels (issued requests only), closing the fork.</summary>
    private void JoinWeightPrefetch()
    {
        if (!_prefetchOpen) return;
        _prefetchOpen = false;
        Stream.Wait(_prefetchJoin!);
    }

    private void DisposeWeightPrefetch()
    {
        _prefetchStream?.Synchronize();
        _prefetchFork?.Dispose();
        _prefetchJoin?.Dispose();
        _prefetchStream?.Dispose();
    }
}
