using System.Runtime.InteropServices;

namespace Tessera.Distributed.Nccl;

/// <summary>ncclResult_t.</summary>
internal enum NcclResult
{
    Success = 0,
    UnhandledCudaError = 1,
    SystemError = 2,
    InternalError = 3,
    InvalidArgument = 4,
    InvalidUsage = 5,
    RemoteError = 6,
    InProgress = 7,
}

/// <summary>ncclDataType_t.</summary>
internal enum NcclDataType
{
    Int8 = 0,
    Uint8 = 1,
    Int32 = 2,
    Uint32 = 3,
    Int64 = 4,
    Uint64 = 5,
    Float16 = 6,
    Float32 = 7,
    Float64 = 8,
    Bfloat16 = 9,
}

/// <summary>ncclRedOp_t.</summary>
internal enum NcclRedOp
{
    Sum = 0,
    Prod = 1,
    Max = 2,
    Min = 3,
    Avg = 4,
}

/// <summary>ncclUniqueId: 128 opaque bytes, passed by value to ncclCommInitRank.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NcclUniqueId
{
    public const int Size = 128;
    public fixed byte Internal[Size];
}

/// <summary>The entry points of libnccl.so.2 (NCCL 2.x) that Tessera uses. Streams are cudaStream_t as IntPtr.</summary>
internal static unsafe partial class NcclNative
{
    public const string Library = "libnccl.so.2";

    [LibraryImport(Library)] public static partial NcclResult ncclGetVersion(int* version);
    [LibraryImport(Library)] public static partial NcclResult ncclGetUniqueId(NcclUniqueId* uniqueId);
    [LibraryImport(Library)] public static partial NcclResult ncclCommInitRank(IntPtr* comm, int nranks, NcclUniqueId commId, int rank);
    [LibraryImport(Library)] public static partial NcclResult ncclCommSplit(IntPtr comm, int color, int key, IntPtr* newComm, IntPtr config);
    [LibraryImport(Library)] public static partial NcclResult ncclCommAbort(IntPtr comm);
    [LibraryImport(Library)] public static partial NcclResult ncclCommDestroy(IntPtr comm);
    [LibraryImport(Library)] public static partial NcclResult ncclCommGetAsyncError(IntPtr comm, NcclResult* asyncError);
    [LibraryImport(Library)] public static partial IntPtr ncclGetErrorString(NcclResult result);
    [LibraryImport(Library)] public static partial IntPtr ncclGetLastError(IntPtr comm);

    [LibraryImport(Library)]
    public static partial NcclResult ncclAllReduce(IntPtr sendBuffer, IntPtr receiveBuffer, nuint count, NcclDataType dataType, NcclRedOp op, IntPtr comm, IntPtr stream);

    [LibraryImport(Library)]
    public static partial NcclResult ncclReduceScatter(IntPtr sendBuffer, IntPtr receiveBuffer, nuint receiveCount, NcclDataType dataType, NcclRedOp op, IntPtr comm, IntPtr stream);

    [LibraryImport(Library)]
    public static partial NcclResult ncclAllGather(IntPtr sendBuffer, IntPtr receiveBuffer, nuint sendCount, NcclDataType dataType, IntPtr comm, IntPtr stream);

    [LibraryImport(Library)]
    public static partial NcclResult ncclBroadcast(IntPtr sendBuffer, IntPtr receiveBuffer, nuint count, NcclDataType dataType, int root, IntPtr comm, IntPtr stream);

    [LibraryImport(Library)]
    public static partial NcclResult ncclSend(IntPtr sendBuffer, nuint count, NcclDataType dataType, int peer, IntPtr comm, IntPtr stream);

    [LibraryImport(Library)]
    public static partial NcclResult ncclRecv(IntPtr receiveBuffer, nuint count, NcclDataType dataType, int peer, IntPtr comm, IntPtr stream);

    [LibraryImport(Library)] public static partial NcclResult ncclGroupStart();
    [LibraryImport(Library)] public static partial NcclResult ncclGroupEnd();

    /// <summary>Throws a clear error when libnccl.so.2 cannot be loaded (instead of a bare DllNotFoundException at the first call).</summary>
    public static void EnsureLoaded()
    {
        if (!NativeLibrary.TryLoad(Library, typeof(NcclNative).Assembly, null, out _))
            throw new NcclException($"{Library} could not be loaded: NCCL 2.x is not installed or not on the library search path. " +
                "Install it (e.g. 'apt install libnccl2', or the NVIDIA HPC SDK) or add its directory to LD_LIBRARY_PATH; CPU runs use InProcessProcessGroup instead.");
    }

    /// <summary>NCCL's text for <paramref name="result"/>.</summary>
    public static string ErrorString(NcclResult result)
    {
        try { return Marshal.PtrToStringUTF8(ncclGetErrorString(result)) ?? result.ToString(); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return result.ToString(); }
    }

    /// <summary>NCCL's last error message for <paramref name="comm"/> (NCCL 2.13+), or null.</summary>
    public static string? LastError(IntPtr comm)
    {
        try
        {
            var text = Marshal.PtrToStringUTF8(ncclGetLastError(comm));
            return string.IsNullOrWhiteSpace(text) ? null : text;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }
}
