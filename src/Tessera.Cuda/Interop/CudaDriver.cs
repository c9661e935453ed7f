using System.Runtime.InteropServices;

namespace Tessera.Cuda.Interop;

/// <summary>
/// The CUDA driver API (libcuda.so.1), the functions Tessera uses. Handles are IntPtr, device
/// pointers ulong (CUdeviceptr). Call through <see cref="Check"/> so every status is checked.
/// </summary>
internal static unsafe partial class CudaDriver
{
    internal const int CUDA_SUCCESS = 0;
    internal const int CUDA_ERROR_NOT_READY = 600;
    internal const int CUDA_ERROR_OUT_OF_MEMORY = 2;
    internal const int CUDA_ERROR_NO_DEVICE = 100;

    internal const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    internal const int CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE = 38;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    internal const int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
    internal const int CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED = 115;

    internal const int CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4;
    internal const int CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1;
    internal const int CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3;
    internal const int CU_FUNC_ATTRIBUTE_NUM_REGS = 4;
    internal const int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
    internal const int CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9;
    internal const uint CU_STREAM_NON_BLOCKING = 1;
    internal const uint CU_EVENT_DEFAULT = 0;
    internal const uint CU_EVENT_DISABLE_TIMING = 2;
    internal const uint CU_MEMHOSTALLOC_PORTABLE = 1;
    internal const int CU_STREAM_CAPTURE_MODE_RELAXED = 2;

    private const string Lib = CudaLibraries.Driver;

    [LibraryImport(Lib)] internal static partial int cuInit(uint flags);
    [LibraryImport(Lib)] internal static partial int cuDriverGetVersion(int* version);
    [LibraryImport(Lib)] internal static partial int cuDeviceGetCount(int* count);
    [LibraryImport(Lib)] internal static partial int cuDeviceGet(int* device, int ordinal);
    [LibraryImport(Lib)] internal static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Lib)] internal static partial int cuDeviceGetAttribute(int* value, int attribute, int device);
    [LibraryImport(Lib, EntryPoint = "cuDeviceTotalMem_v2")] internal static partial int cuDeviceTotalMem(nuint* bytes, int device);
    [LibraryImport(Lib)] internal static partial int cuDevicePrimaryCtxRetain(IntPtr* context, int device);
    [LibraryImport(Lib, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] internal static partial int cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(Lib)] internal static partial int cuCtxSetCurrent(IntPtr context);
    [LibraryImport(Lib)] internal static partial int cuCtxSynchronize();
    [LibraryImport(Lib, EntryPoint = "cuMemGetInfo_v2")] internal static partial int cuMemGetInfo(nuint* free, nuint* total);

    [LibraryImport(Lib)] internal static partial int cuStreamCreate(IntPtr* stream, uint flags);
    [LibraryImport(Lib, EntryPoint = "cuStreamDestroy_v2")] internal static partial int cuStreamDestroy(IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuStreamSynchronize(IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuStreamWaitEvent(IntPtr stream, IntPtr @event, uint flags);
    [LibraryImport(Lib)] internal static partial int cuStreamQuery(IntPtr stream);
    [LibraryImport(Lib, EntryPoint = "cuStreamBeginCapture_v2")] internal static partial int cuStreamBeginCapture(IntPtr stream, int mode);
    [LibraryImport(Lib)] internal static partial int cuStreamEndCapture(IntPtr stream, IntPtr* graph);
    [LibraryImport(Lib)] internal static partial int cuGraphInstantiateWithFlags(IntPtr* exec, IntPtr graph, ulong flags);
    [LibraryImport(Lib)] internal static partial int cuGraphLaunch(IntPtr exec, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuGraphExecDestroy(IntPtr exec);
    [LibraryImport(Lib)] internal static partial int cuGraphDestroy(IntPtr graph);

    [LibraryImport(Lib)] internal static partial int cuEventCreate(IntPtr* @event, uint flags);
    [LibraryImport(Lib, EntryPoint = "cuEventDestroy_v2")] internal static partial int cuEventDestroy(IntPtr @event);
    [LibraryImport(Lib)] internal static partial int cuEventRecord(IntPtr @event, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuEventSynchronize(IntPtr @event);
    [LibraryImport(Lib)] internal static partial int cuEventQuery(IntPtr @event);
    [LibraryImport(Lib)] internal static partial int cuEventElapsedTime(float* milliseconds, IntPtr start, IntPtr end);

    [LibraryImport(Lib)] internal static partial int cuDeviceGetDefaultMemPool(IntPtr* pool, int device);
    [LibraryImport(Lib)] internal static partial int cuMemPoolSetAttribute(IntPtr pool, int attribute, void* value);
    [LibraryImport(Lib)] internal static partial int cuMemPoolTrimTo(IntPtr pool, nuint minBytesToKeep);
    [LibraryImport(Lib)] internal static partial int cuMemAllocAsync(ulong* pointer, nuint bytes, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuMemFreeAsync(ulong pointer, IntPtr stream);
    [LibraryImport(Lib, EntryPoint = "cuMemcpyHtoDAsync_v2")] internal static partial int cuMemcpyHtoDAsync(ulong destination, void* source, nuint bytes, IntPtr stream);
    [LibraryImport(Lib, EntryPoint = "cuMemcpyDtoHAsync_v2")] internal static partial int cuMemcpyDtoHAsync(void* destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(Lib, EntryPoint = "cuMemcpyDtoDAsync_v2")] internal static partial int cuMemcpyDtoDAsync(ulong destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuMemsetD8Async(ulong destination, byte value, nuint count, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuMemHostAlloc(void** pointer, nuint bytes, uint flags);
    [LibraryImport(Lib)] internal static partial int cuMemFreeHost(void* pointer);

    [LibraryImport(Lib)] internal static partial int cuModuleLoadData(IntPtr* module, void* image);
    [LibraryImport(Lib)] internal static partial int cuModuleUnload(IntPtr module);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] internal static partial int cuModuleGetFunction(IntPtr* function, IntPtr module, string name);
    [LibraryImport(Lib)] internal static partial int cuFuncSetAttribute(IntPtr function, int attribute, int value);
    [LibraryImport(Lib)] internal static partial int cuFuncGetAttribute(int* value, int attribute, IntPtr function);
    [LibraryImport(Lib)] internal static partial int cuOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, IntPtr function, int blockSize, nuint dynamicSharedBytes);
    [LibraryImport(Lib)] internal static partial int cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ,
        uint blockX, uint blockY, uint blockZ, uint sharedBytes, IntPtr stream, void** parameters, void** extra);

    /// <summary>CUlaunchAttribute: an id, padding to 8 bytes, and a 64-byte value union (its first int, or the three unsigned of
    /// a cluster's dimensions, used here).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 72)]
    internal struct LaunchAttribute
    {
        [FieldOffset(0)] public int Id;
        [FieldOffset(8)] public int Value;
        [FieldOffset(12)] public int ValueY;
        [FieldOffset(16)] public int ValueZ;
    }

    /// <summary>CUlaunchConfig (CUDA 12+).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct LaunchConfig
    {
        public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
        public IntPtr Stream;
        public LaunchAttribute* Attributes;
        public uint AttributeCount;
    }

    internal const int CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4;
    internal const int CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;

    [LibraryImport(Lib)] internal static partial int cuLaunchKernelEx(LaunchConfig* config, IntPtr function, void** parameters, void** extra);
    [LibraryImport(Lib)] internal static partial int cuOccupancyMaxActiveClusters(int* clusters, IntPtr function, LaunchConfig* config);

    // Tensor maps for the tensor memory accelerator (CUtensorMap: 128 bytes, 64-byte aligned; the enums' values as cuda.h gives them).
    internal const int CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9;
    internal const int CU_TENSOR_MAP_INTERLEAVE_NONE = 0, CU_TENSOR_MAP_SWIZZLE_128B = 3, CU_TENSOR_MAP_SWIZZLE_64B = 2, CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3,
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0;
    [LibraryImport(Lib)] internal static partial int cuTensorMapEncodeTiled(void* tensorMap, int dataType, uint rank, ulong globalAddress,
        ulong* globalDim, ulong* globalStrides, uint* boxDim, uint* elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill);

    /// <summary>Starts and stops the profilers' collection (ncu --profile-from-start off, nsys --capture-range cudaProfilerApi); no effect without one.</summary>
    [LibraryImport(Lib)] internal static partial int cuProfilerStart();
    [LibraryImport(Lib)] internal static partial int cuProfilerStop();

    [LibraryImport(Lib)] internal static partial int cuGetErrorName(int error, byte** name);
    [LibraryImport(Lib)] internal static partial int cuGetErrorString(int error, byte** text);

    /// <summary>Throws <see cref="CudaException"/> naming <paramref name="call"/> when <paramref name="status"/> is not CUDA_SUCCESS.</summary>
    internal static void Check(int status, string call, string? context = null)
    {
        if (status != CUDA_SUCCESS) throw Error(status, call, context);
    }

    /// <summary>The exception for a failed driver call, with CUDA's name and text for the code.</summary>
    internal static CudaException Error(int status, string call, string? context = null)
    {
        byte* name = null, text = null;
        string n = cuGetErrorName(status, &name) == CUDA_SUCCESS && name != null ? Marshal.PtrToStringUTF8((IntPtr)name)! : "CUDA_ERROR_UNKNOWN";
        string t = cuGetErrorString(status, &text) == CUDA_SUCCESS && text != null ? Marshal.PtrToStringUTF8((IntPtr)text)! : "unrecognized error code";
        return new CudaException(call, status, n, t, context);
    }
}
