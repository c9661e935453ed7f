using System.Text;
using Tessera.Cuda.Interop;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda.Runtime;

/// <summary>
/// One GPU and its primary context. Every method that calls the driver first makes the context
/// current on the calling thread, so a device may be used from any thread.
/// </summary>
public sealed unsafe class CudaDevice : IDisposable
{
    private IntPtr _context;

    private CudaDevice(int ordinal, int handle, IntPtr context)
    {
        Ordinal = ordinal;
        Handle = handle;
        _context = context;
        var name = stackalloc byte[256];
        Check(cuDeviceGetName(name, 256, handle), "cuDeviceGetName");
        Name = Encoding.UTF8.GetString(name, new ReadOnlySpan<byte>(name, 256).IndexOf((byte)0));
        MultiprocessorCount = DeviceAttribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
        ComputeCapability = (DeviceAttribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR), DeviceAttribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR));
        L2CacheBytes = DeviceAttribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
        MaxSharedMemoryPerBlockOptIn = DeviceAttribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
        nuint total;
        Check(cuDeviceTotalMem(&total, handle), "cuDeviceTotalMem");
        TotalMemoryBytes = (long)total;
        int version;
        Check(cuDriverGetVersion(&version), "cuDriverGetVersion");
        DriverVersion = version;
    }

    /// <summary>
    /// Opens GPU <paramref name="ordinal"/>: loads the driver, initializes it, retains the primary
    /// context. Throws <see cref="CudaUnavailableException"/> when there is no driver or no such GPU.
    /// </summary>
    public static CudaDevice Open(int ordinal = 0)
    {
        CudaLibraries.Load(CudaLibraries.Driver);
        int status = cuInit(0);
        if (status == CUDA_ERROR_NO_DEVICE)
            throw new CudaUnavailableException("the NVIDIA driver is installed but reports no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE): run on a machine with a GPU, or check CUDA_VISIBLE_DEVICES");
        if (status != CUDA_SUCCESS)
            throw new CudaUnavailableException($"the NVIDIA driver failed to initialize: {Error(status, "cuInit").Message}");
        int count;
        Check(cuDeviceGetCount(&count), "cuDeviceGetCount");
        if (ordinal < 0 || ordinal >= count)
            throw new CudaUnavailableException($"GPU {ordinal} requested but the driver sees {count} device(s)");
        int handle;
        Check(cuDeviceGet(&handle, ordinal), "cuDeviceGet");
        IntPtr context;
        Check(cuDevicePrimaryCtxRetain(&context, handle), "cuDevicePrimaryCtxRetain");
        Check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
        return new CudaDevice(ordinal, handle, context);
    }

    /// <summary>Device ordinal as the driver numbers it.</summary>
    public int Ordinal { get; }

    internal int Handle { get; }

    /// <summary>Marketing name, e.g. "NVIDIA H100 80GB HBM3".</summary>
    public string Name { get; }

    /// <summary>Number of streaming multiprocessors.</summary>
    public int MultiprocessorCount { get; }

    /// <summary>Compute capability (major, minor); (9, 0) for Hopper.</summary>
    public (int Major, int Minor) ComputeCapability { get; }

    /// <summary>The NVRTC target for this device, e.g. "sm_90".</summary>
    public string Architecture => $"sm_{ComputeCapability.Major}{ComputeCapability.Minor}";

    /// <summary>L2 cache size in bytes.</summary>
    public int L2CacheBytes { get; }

    /// <summary>Largest shared memory a block may opt in to, in bytes.</summary>
    public int MaxSharedMemoryPerBlockOptIn { get; }

    /// <summary>Device memory in bytes.</summary>
    public long TotalMemoryBytes { get; }

    /// <summary>Driver's CUDA version as an integer (13000 = 13.0).</summary>
    public int DriverVersion { get; }

    /// <summary>Free and total device memory now, in bytes, as the driver reports it.</summary>
    public (long Free, long Total) MemoryInfo()
    {
        MakeCurrent();
        nuint free, total;
        Check(cuMemGetInfo(&free, &total), "cuMemGetInfo");
        return ((long)free, (long)total);
    }

    /// <summary>Makes this device's context current on the calling thread.</summary>
    public void MakeCurrent()
    {
        ObjectDisposedException.ThrowIf(_context == IntPtr.Zero, this);
        Check(cuCtxSetCurrent(_context), "cuCtxSetCurrent");
    }

    /// <summary>Waits for all work on the device.</summary>
    public void Synchronize()
    {
        MakeCurrent();
        Check(cuCtxSynchronize(), "cuCtxSynchronize");
    }

    private int DeviceAttribute(int attribute)
    {
        int value;
        Check(cuDeviceGetAttribute(&value, attribute, Handle), "cuDeviceGetAttribute", $"attribute {attribute}");
        return value;
    }

    /// <summary>Releases the primary context (the driver frees it when the last user releases it).</summary>
    public void Dispose()
    {
        if (_context == IntPtr.Zero) return;
        _context = IntPtr.Zero;
        cuDevicePrimaryCtxRelease(Handle);
    }

    public override string ToString() =>
        $"{Name} (cuda:{Ordinal}, {Architecture}, {MultiprocessorCount} SMs, {TotalMemoryBytes / (1 << 20)} MiB, driver {DriverVersion / 1000}.{DriverVersion % 1000 / 10})";
}
