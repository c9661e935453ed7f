using System.Runtime.InteropServices;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend : IAsyncReadback
{
    private const long MaxStagingBytes = 64L << 20;
    private void* _pinned;
    private long _pinnedBytes;
    private IntPtr _stagingDone; // event recorded after the last copy that reads the pinned buffer

    public Tensor Allocate(Shape shape, DType dtype)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        RefuseWhileCapturing($"allocating a {shape} {dtype} tensor");
        return new Tensor(new CudaStorage(this, _allocator, dtype, shape.NumElements), shape);
    }

    /// <summary>
    /// A tensor for one op's intermediate values, freed by the op right after its launches (stream-ordered). Unlike
    /// <see cref="Allocate"/> it is allowed while recording a graph, whose allocation and free nodes then own the memory.
    /// </summary>
    private Tensor ScratchTensor(Shape shape, DType dtype) => new(new CudaStorage(this, _allocator, dtype, shape.NumElements), shape);

    public void CopyFromHost<T>(ReadOnlySpan<T> source, Tensor destination) where T : unmanaged
    {
        RefuseWhileCapturing("CopyFromHost");
        CheckHostType<T>("CopyFromHost", destination);
        RequireContiguous("CopyFromHost", "destination", destination);
        if (source.Length != destination.NumElements)
            throw new ArgumentException($"CudaBackend.CopyFromHost: {source.Length} values for a tensor of {destination.NumElements} elements {destination.Shape}");
        ulong dst = Ptr(destination);
        // By whole elements, a staging buffer at a time: a tensor of 2 GiB or more has more bytes than a span can count.
        int perChunk = StagingElements<T>();
        for (int done = 0; done < source.Length;)
        {
            int count = Math.Min(source.Length - done, perChunk);
            var bytes = MemoryMarshal.AsBytes(source.Slice(done, count));
            var staging = Staging(bytes.Length);
            bytes.CopyTo(staging);
            Profiler?.Begin("memcpy host->device");
            Check(cuMemcpyHtoDAsync(dst + (ulong)done * (ulong)sizeof(T), _pinned, (nuint)bytes.Length, Stream.Handle), "cuMemcpyHtoDAsync");
            Profiler?.End();
            Check(cuEventRecord(_stagingDone, Stream.Handle), "cuEventRecord");
            done += count;
        }
    }

    /// <summary>How many values of <typeparamref name="T"/> one staging buffer holds (its 64 MiB).</summary>
    private static int StagingElements<T>() where T : unmanaged => (int)(MaxStagingBytes / sizeof(T));

    /// <inheritdoc/>
    /// <remarks>Pinned memory of its own (not the staging buffer that <see cref="CopyToHost{T}"/> waits on).</remarks>
    public IReadbackBuffer CreateReadbackBuffer(int capacity)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new CudaReadbackBuffer(this, capacity);
    }

    public void CopyToHost<T>(Tensor source, Span<T> destination) where T : unmanaged
    {
        RefuseWhileCapturing("CopyToHost");
        CheckHostType<T>("CopyToHost", source);
        if (destination.Length != source.NumElements)
            throw new ArgumentException($"CudaBackend.CopyToHost: destination holds {destination.Length} values, the tensor {source.Shape} has {source.NumElements}");
        Tensor? temporary = null;
        if (!source.IsContiguous)
        {
            temporary = Allocate(source.Shape, source.DType);
            Copy(source, temporary);
            source = temporary;
        }
        try
        {
            ulong src = Ptr(source);
            int perChunk = StagingElements<T>();
            for (int done = 0; done < destination.Length;)
            {
                int count = Math.Min(destination.Length - done, perChunk);
                var bytes = MemoryMarshal.AsBytes(destination.Slice(done, count));
                var staging = Staging(bytes.Length);
                Check(cuMemcpyDtoHAsync(_pinned, src + (ulong)done * (ulong)sizeof(T), (nuint)bytes.Length, Stream.Handle), "cuMemcpyDtoHAsync");
                Stream.Synchronize();
                staging.CopyTo(bytes);
                done += count;
            }
        }
        finally
        {
            temporary?.Storage.Dispose();
        }
    }

    private static void CheckHostType<T>(string op, Tensor t) where T : unmanaged
    {
        if (sizeof(T) != t.DType.SizeInBytes())
            throw new ArgumentException($"CudaBackend.{op}: host type {typeof(T).Name} ({sizeof(T)} bytes) does not match tensor dtype {t.DType} ({t.DType.SizeInBytes()} bytes)");
    }

    /// <summary>The pinned staging buffer, at least <paramref name="bytes"/> long, once the copies that read it have finished.</summary>
    private Span<byte> Staging(long bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CudaDevice.MakeCurrent();
        if (_stagingDone == IntPtr.Zero)
        {
            IntPtr e;
            Check(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
            _stagingDone = e;
        }
        else Check(cuEventSynchronize(_stagingDone), "cuEventSynchronize");
        if (_pinnedBytes < bytes)
        {
            if (_pinned != null) Check(cuMemFreeHost(_pinned), "cuMemFreeHost");
            _pinned = null;
            long size = Math.Min(MaxStagingBytes, Math.Max(bytes, 1L << 20));
            void* p;
            Check(cuMemHostAlloc(&p, (nuint)size, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc", $"{size} bytes of pinned host memory");
            _pinned = p;
            _pinnedBytes = size;
        }
        return new Span<byte>(_pinned, (int)bytes);
    }

    private void FreePinned()
    {
        if (_stagingDone != IntPtr.Zero) { cuEventSynchronize(_stagingDone); cuEventDestroy(_stagingDone); _stagingDone = IntPtr.Zero; }
        if (_pinned != null) { cuMemFreeHost(_pinned); _pinned = null; _pinnedBytes = 0; }
    }

    /// <summary>Sizes and strides of a copy, padded to rank 4 (kernel argument Layout4).</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Layout4
    {
        public fixed long Size[4];
        public fixed long Source[4];
        public fixed long Destination[4];
    }

    public void Copy(Tensor source, Tensor destination)
    {
        RequireSameShape("Copy", source, "source", destination, "destination");
        long n = source.NumElements;
        if (n == 0) return;
        CudaDevice.MakeCurrent();
        if (source.DType == destination.DType && source.IsContiguous && destination.IsContiguous)
        {
            Profiler?.Begin("memcpy device->device");
            Check(cuMemcpyDtoDAsync(Ptr(destination), Ptr(source), (nuint)(n * source.DType.SizeInBytes()), Stream.Handle), "cuMemcpyDtoDAsync");
            Profiler?.End();
            return;
        }
        if (source.IsContiguous && destination.IsContiguous)
        {
            ulong s = Ptr(source), d = Ptr(destination);
            void** a = stackalloc void*[] { &s, &d, &n };
            Launch("copy.cu", $"cast_{CastName(source.DType)}_to_{CastName(destination.DType)}", GridFor(n), Threads, a);
            return;
        }
        // Drop size-1 dimensions and merge dimensions that are contiguous in both views.
        var dims = new List<(long Size, long Src, long Dst)>();
        for (int i = 0; i < source.Rank; i++)
        {
            if (source.Size(i) == 1) continue;
            var d = ((long)source.Size(i), source.Stride(i), destination.Stride(i));
            if (dims.Count > 0)
            {
                var last = dims[^1];
                if (last.Src == d.Item2 * d.Item1 && last.Dst == d.Item3 * d.Item1)
                {
                    dims[^1] = (last.Size * d.Item1, d.Item2, d.Item3);
                    continue;
                }
            }
            dims.Add(d);
        }
        if (dims.Count > 4)
            throw new NotSupportedException($"CudaBackend.Copy: a strided copy of {source.Shape} needs {dims.Count} dimensions after merging; at most 4 are supported");
        Layout4 layout;
        int pad = 4 - dims.Count;
        for (int i = 0; i < 4; i++)
        {
            var d = i < pad ? (1L, 0L, 0L) : dims[i - pad];
            layout.Size[i] = d.Item1; layout.Source[i] = d.Item2; layout.Destination[i] = d.Item3;
        }
        string kernel = source.DType == destination.DType
            ? $"copy_b{source.DType.SizeInBytes()}"
            : $"copy_{CastName(source.DType)}_to_{CastName(destination.DType)}";
        ulong src = Ptr(source), dst = Ptr(destination);
        void** args = stackalloc void*[] { &src, &dst, &layout, &n };
        Launch("copy.cu", kernel, GridFor(n), Threads, args);
    }

    private static string CastName(DType dtype) => dtype switch
    {
        DType.F32 => "f32",
        DType.F64 => "f64",
        DType.BF16 => "bf16",
        DType.F16 => "f16",
        _ => throw new NotSupportedException($"CudaBackend.Copy: no cast from or to {dtype}"),
    };

    public void Fill(Tensor tensor, double value)
    {
        RequireContiguous("Fill", "tensor", tensor);
        long n = tensor.NumElements;
        if (n == 0) return;
        ulong p = Ptr(tensor);
        if (value == 0 && !double.IsNegative(value))
        {
            CudaDevice.MakeCurrent();
            Check(cuMemsetD8Async(p, 0, (nuint)(n * tensor.DType.SizeInBytes()), Stream.Handle), "cuMemsetD8Async");
            return;
        }
        switch (tensor.DType)
        {
            case DType.F64:
            {
                double v = value;
                void** args = stackalloc void*[] { &p, &n, &v };
                Launch("copy.cu", "fill_f64", GridFor(n), Threads, args);
                break;
            }
            case DType.I32:
            {
                int v = checked((int)value);
                void** args = stackalloc void*[] { &p, &n, &v };
                Launch("copy.cu", "fill_i32", GridFor(n), Threads, args);
                break;
            }
            default:
            {
                float v = (float)value;
                void** args = stackalloc void*[] { &p, &n, &v };
                Launch("copy.cu", "fill_" + Suffix(tensor.DType, "Fill"), GridFor(n), Threads, args);
                break;
            }
        }
    }
}
