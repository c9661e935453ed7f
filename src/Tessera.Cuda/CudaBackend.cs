using System.Runtime.InteropServices;
using Tessera.Cuda.Compilation;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda;

/// <summary>
/// The GPU backend: every op is enqueued on one CUDA stream and returns at once; only
/// <see cref="CopyToHost{T}"/> and <see cref="Synchronize"/> wait. Matrix products go through
/// cuBLASLt (fp32 compute, tf32 off); the other ops are NVRTC-compiled kernels (Kernels/*.cu).
/// F32, BF16 and F16 storage, fp32 math. Memory comes from a stream-ordered caching allocator.
/// </summary>
public sealed unsafe partial class CudaBackend : IBackend, IDisposable
{
    private const int Threads = 256;
    private readonly CudaAllocator _allocator;
    private KernelLibrary? _kernels;

    /// <summary>
    /// Opens GPU <paramref name="ordinal"/> with its own stream, allocator, kernel modules and cuBLASLt handle, running as
    /// <paramref name="options"/> say (default: <see cref="CudaBackendOptions.Default"/>; validated here, kept for the
    /// backend's lifetime). Several backends may share one GPU (thread ranks): each has its own stream and allocator
    /// bookkeeping over the device's primary context and default memory pool.
    /// Throws <see cref="Interop.CudaUnavailableException"/> when there is no driver or GPU.
    /// </summary>
    public CudaBackend(int ordinal = 0, CudaBackendOptions? options = null)
    {
        Options = (options ?? CudaBackendOptions.Default).Validate();
        CudaDevice = CudaDevice.Open(ordinal);
        Stream = new CudaStream(CudaDevice);
        _allocator = new CudaAllocator(CudaDevice, Stream);
        KernelCache = new KernelCache(Options.KernelCacheFolder);
        if (Options.ProfileOps) Profiler = new CudaOpProfiler(CudaDevice, Stream);
    }

    /// <summary>How this backend runs (the options it was opened with).</summary>
    public CudaBackendOptions Options { get; }

    /// <summary>Per-op timing, present when <see cref="CudaBackendOptions.ProfileOps"/> is on.</summary>
    public CudaOpProfiler? Profiler { get; }

    /// <summary>The GPU.</summary>
    public CudaDevice CudaDevice { get; }

    /// <summary>The stream every op is enqueued on.</summary>
    public CudaStream Stream { get; }

    /// <summary>The allocator behind <see cref="Allocate"/>.</summary>
    public CudaAllocator Allocator => _allocator;

    /// <summary>Where compiled kernels are cached.</summary>
    public KernelCache KernelCache { get; }

    /// <summary>The run-time compiled kernels (NVRTC is loaded on first use).</summary>
    public KernelLibrary Kernels => _kernels ??= new KernelLibrary(CudaDevice, KernelCache);

    public Device Device => Device.Cuda(CudaDevice.Ordinal);

    public void Synchronize()
    {
        RefuseWhileCapturing("Synchronize");
        Stream.Synchronize();
    }

    /// <summary>Waits for pending work, then frees every allocation, module and handle.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Stream.Synchronize();
        DisposeMatMul();
        FreePinned();
        Profiler?.Dispose();
        _allocator.Dispose();
        _kernels?.Dispose();
        Stream.Dispose();
        CudaDevice.Dispose();
    }

    private bool _disposed;

    // ---------------------------------------------------------------- helpers

    internal static ulong Ptr(Tensor t)
    {
        if (t.Storage is not CudaStorage s)
            throw new ArgumentException($"tensor {t} does not live on a CUDA backend");
        return s.Pointer + (ulong)(t.Offset * t.DType.SizeInBytes());
    }

    private static ulong PtrOrNull(Tensor? t) => t is null ? 0 : Ptr(t);

    /// <summary>Device address of a tensor's first element, for libraries that take raw pointers (NCCL).</summary>
    public IntPtr DevicePointer(Tensor tensor)
    {
        if (tensor.Backend != this) throw new ArgumentException($"tensor {tensor} belongs to another backend");
        return (IntPtr)(long)Ptr(tensor);
    }

    /// <summary>The kernel-name suffix for a floating-point storage type.</summary>
    private static string Suffix(DType dtype, string op) => dtype switch
    {
        DType.F32 => "f32",
        DType.BF16 => "bf16",
        DType.F16 => "f16",
        _ => throw new NotSupportedException($"CudaBackend.{op}: dtype {dtype} is not supported (F32, BF16, F16 are)"),
    };

    private uint GridFor(long n) => (uint)Math.Clamp((n + Threads - 1) / Threads, 1, (long)CudaDevice.MultiprocessorCount * 32);

    private void Launch(string file, string kernel, uint grid, uint block, void** args, uint sharedBytes = 0) =>
        Launch(file, kernel, (grid, 1, 1), block, args, sharedBytes);

    private void Launch(string file, string kernel, (uint X, uint Y, uint Z) grid, uint block, void** args, uint sharedBytes = 0) =>
        Launch(file, kernel, grid, block, args, sharedBytes, dependent: false);

    /// <summary>
    /// Launches <paramref name="kernel"/>. <paramref name="dependent"/>: the kernel calls <c>pdl_wait()</c> (common.cuh)
    /// before it touches anything an earlier kernel writes, so it may be launched with programmatic stream serialization
    /// (sm_90+): it starts, and prefetches what does not depend on its predecessor, while that one finishes. Off under the
    /// op profiler (its events separate the kernels anyway) and when <see cref="CudaBackendOptions.ProgrammaticDependentLaunch"/> is off.
    /// <paramref name="clusterX"/> above 1: the grid in thread-block clusters of that many CTAs along x (sm_90+; grid.X a multiple of it).
    /// <paramref name="profileName"/>: the op profiler's name for the launch (the kernel's when null).
    /// </summary>
    private void Launch(string file, string kernel, (uint X, uint Y, uint Z) grid, uint block, void** args, uint sharedBytes, bool dependent,
        uint clusterX = 1, string? profileName = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var function = Kernels.Module(file).Function(kernel);
        CudaDevice.MakeCurrent();
        AllowDynamicShared(function, kernel, sharedBytes);
        Profiler?.Begin(profileName ?? kernel);
        bool programmatic = dependent && ProgrammaticLaunch && Profiler is null;
        if (programmatic || clusterX > 1)
        {
            var attributes = stackalloc LaunchAttribute[2];
            int count = 0;
            if (programmatic) attributes[count++] = new LaunchAttribute { Id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, Value = 1 };
            if (clusterX > 1) attributes[count++] = new LaunchAttribute { Id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, Value = (int)clusterX, ValueY = 1, ValueZ = 1 };
            var config = new LaunchConfig
            {
                GridX = grid.X, GridY = grid.Y, GridZ = grid.Z, BlockX = block, BlockY = 1, BlockZ = 1,
                SharedBytes = sharedBytes, Stream = Stream.Handle, Attributes = attributes, AttributeCount = (uint)count,
            };
            string how = string.Join(", ", new[] { programmatic ? "programmatic dependent launch" : null, clusterX > 1 ? $"clusters of {clusterX}" : null }.OfType<string>());
            Check(cuLaunchKernelEx(&config, function, args, null), "cuLaunchKernelEx",
                $"{kernel} in {file} ({how}), grid ({grid.X}, {grid.Y}, {grid.Z}), block {block}, {sharedBytes} B shared");
        }
        else
            Check(cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block, 1, 1, sharedBytes, Stream.Handle, args, null),
                "cuLaunchKernel", $"{kernel} in {file}, grid ({grid.X}, {grid.Y}, {grid.Z}), block {block}, {sharedBytes} B shared");
        Profiler?.End();
        NoteLaunch();
    }

    /// <summary>Static shared memory of each kernel launched with dynamic shared memory, read from the driver once.</summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<IntPtr, int> _staticShared = new();

    /// <summary>
    /// Raises <paramref name="function"/>'s dynamic shared-memory limit when its static and dynamic shared memory together pass
    /// the 48 KiB a launch gets without opting in (a kernel with 48 KiB of dynamic and a few bytes of static shared memory
    /// fails to launch otherwise).
    /// </summary>
    private void AllowDynamicShared(IntPtr function, string kernel, uint sharedBytes)
    {
        if (sharedBytes == 0)
            return;
        int staticBytes = _staticShared.GetOrAdd(function, f =>
        {
            int value;
            Check(cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f), "cuFuncGetAttribute", kernel + " (static shared memory)");
            return value;
        });
        if (staticBytes + sharedBytes > 48 * 1024)
            Check(cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)sharedBytes), "cuFuncSetAttribute", kernel);
    }

    /// <summary>
    /// Launches <paramref name="kernel"/> in thread-block clusters of <paramref name="clusterCtas"/> CTAs along x (compute
    /// capability 9.0 and later): the CTAs of a cluster run at once on one GPC and reach each other's shared memory. The grid
    /// is as many clusters as the device holds at once (<see cref="ResidentClusters"/>), at most <paramref name="mostClusters"/>:
    /// the kernel's clusters walk their work.
    /// </summary>
    private void LaunchCluster(string file, string kernel, long mostClusters, uint clusterCtas, uint block, void** args, uint sharedBytes = 0,
        string? profileName = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var function = Kernels.Module(file).Function(kernel);
        CudaDevice.MakeCurrent();
        AllowDynamicShared(function, kernel, sharedBytes);
        var attribute = new LaunchAttribute { Id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, Value = (int)clusterCtas, ValueY = 1, ValueZ = 1 };
        var config = new LaunchConfig
        {
            GridX = clusterCtas, GridY = 1, GridZ = 1, BlockX = block, BlockY = 1, BlockZ = 1,
            SharedBytes = sharedBytes, Stream = Stream.Handle, Attributes = &attribute, AttributeCount = 1,
        };
        long clusters = Math.Min(Math.Max(mostClusters, 1), ResidentClusters(kernel, function, &config));
        config.GridX = (uint)(clusters * clusterCtas);
        Profiler?.Begin(profileName ?? kernel);
        Check(cuLaunchKernelEx(&config, function, args, null),
            "cuLaunchKernelEx", $"{kernel} in {file} ({clusters} clusters of {clusterCtas}), block {block}, {sharedBytes} B shared");
        Profiler?.End();
        NoteLaunch();
    }

    /// <summary>
    /// How many clusters of <paramref name="config"/>'s shape the device runs at once (cuOccupancyMaxActiveClusters: the
    /// CTAs' registers and shared memory, and how clusters fit the GPCs), measured once per kernel and shape.
    /// </summary>
    private long ResidentClusters(string kernel, IntPtr function, LaunchConfig* config)
    {
        var key = (kernel, config->BlockX, config->Attributes->Value, config->SharedBytes);
        if (_residentClusters.TryGetValue(key, out long known)) return known;
        int clusters;
        Check(cuOccupancyMaxActiveClusters(&clusters, function, config), "cuOccupancyMaxActiveClusters", kernel);
        if (clusters < 1)
            throw new InvalidOperationException($"CudaBackend: {kernel} in clusters of {config->Attributes->Value} CTAs of {config->BlockX} threads does not fit on {CudaDevice.Name}");
        return _residentClusters[key] = clusters;
    }

    private readonly Dictionary<(string Kernel, uint Block, int Ctas, uint Shared), long> _residentClusters = new();

    /// <summary>Programmatic dependent launch: compute capability 9.0 or later, unless the options turn it off.</summary>
    private bool ProgrammaticLaunch => _programmaticLaunch ??=
        CudaDevice.ComputeCapability.Major >= 9 && Options.ProgrammaticDependentLaunch;

    private bool? _programmaticLaunch;

    /// <summary>Scratch device memory for one op, returned (stream-ordered) by the caller right after its launches.</summary>
    private ulong Scratch(long bytes) => _allocator.Allocate(bytes);

    /// <summary>
    /// A device buffer of at least <paramref name="bytes"/> that the kernels using it leave zero after every launch (split
    /// counters, fixed-point sums): made and zeroed once, outside any graph recording, so recorded steps address it and find
    /// it zero. Grown, not freed: a graph recorded earlier may still address the smaller buffer. 0 while a recording would
    /// need it to grow (the caller then takes a path without it).
    /// </summary>
    private ulong ZeroedOnce(ref ulong buffer, ref long capacity, long bytes)
    {
        if (bytes <= capacity) return buffer;
        if (_capturing) return 0;
        buffer = _allocator.Allocate(bytes);
        capacity = bytes;
        CudaDevice.MakeCurrent();
        Interop.CudaDriver.Check(Interop.CudaDriver.cuMemsetD8Async(buffer, 0, (nuint)bytes, Stream.Handle), "cuMemsetD8Async");
        return buffer;
    }

    private void FreeScratch(ulong pointer) => _allocator.Free(pointer);

    private static void RequireContiguous(string op, string name, Tensor t)
    {
        if (!t.IsContiguous) throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must be contiguous; copy it with Contiguous() first");
    }

    private static void RequireSameShape(string op, Tensor a, string an, Tensor b, string bn)
    {
        if (a.Shape != b.Shape) throw new ArgumentException($"CudaBackend.{op}: {an} {a.Shape} and {bn} {b.Shape} must have the same shape");
    }

    private static void RequireDType(string op, string name, Tensor t, DType dtype)
    {
        if (t.DType != dtype) throw new ArgumentException($"CudaBackend.{op}: {name} must be {dtype}, got {t.DType}");
    }

    /// <summary>Strides of (b, t, h) for a rank-4 (B, T, H, D) view whose last dimension is contiguous.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Strides3
    {
        public long B, T, H;

        public static Strides3 Of(string op, string name, Tensor t)
        {
            if (t.Rank != 4) throw new ArgumentException($"CudaBackend.{op}: {name} must be rank 4 (B, T, H, D), got {t.Shape}");
            if (t.Stride(3) != 1 && t.Size(3) > 1) throw new ArgumentException($"CudaBackend.{op}: {name}'s last dimension must be contiguous");
            return new Strides3 { B = t.Stride(0), T = t.Stride(1), H = t.Stride(2) };
        }
    }
}
