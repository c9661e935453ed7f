using System.Runtime.InteropServices;

namespace Tessera.Cuda.Interop;

/// <summary>NVRTC, the CUDA run-time compiler (libnvrtc.so.13 or .12).</summary>
internal static unsafe partial class Nvrtc
{
    internal const int NVRTC_SUCCESS = 0;
    internal const int NVRTC_ERROR_COMPILATION = 6;
    private const string Lib = CudaLibraries.Nvrtc;

    [LibraryImport(Lib)] internal static partial int nvrtcVersion(int* major, int* minor);
    [LibraryImport(Lib)] internal static partial int nvrtcCreateProgram(IntPtr* program, byte* source, byte* name, int headerCount, byte** headers, byte** includeNames);
    [LibraryImport(Lib)] internal static partial int nvrtcDestroyProgram(IntPtr* program);
    [LibraryImport(Lib)] internal static partial int nvrtcCompileProgram(IntPtr program, int optionCount, byte** options);
    [LibraryImport(Lib)] internal static partial int nvrtcGetProgramLogSize(IntPtr program, nuint* size);
    [LibraryImport(Lib)] internal static partial int nvrtcGetProgramLog(IntPtr program, byte* log);
    [LibraryImport(Lib)] internal static partial int nvrtcGetCUBINSize(IntPtr program, nuint* size);
    [LibraryImport(Lib)] internal static partial int nvrtcGetCUBIN(IntPtr program, byte* cubin);
    [LibraryImport(Lib)] internal static partial int nvrtcGetPTXSize(IntPtr program, nuint* size);
    [LibraryImport(Lib)] internal static partial int nvrtcGetPTX(IntPtr program, byte* ptx);
    [LibraryImport(Lib)] internal static partial byte* nvrtcGetErrorString(int result);

    /// <summary>Throws <see cref="CudaException"/> naming the call when NVRTC reports an error.</summary>
    internal static void Check(int status, string call, string? context = null)
    {
        if (status == NVRTC_SUCCESS) return;
        var text = Marshal.PtrToStringUTF8((IntPtr)nvrtcGetErrorString(status)) ?? "unknown NVRTC error";
        throw new CudaException(call, status, text, text, context);
    }
}
