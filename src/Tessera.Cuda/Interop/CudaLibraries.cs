using System.Reflection;
using System.Runtime.InteropServices;

namespace Tessera.Cuda.Interop;

/// <summary>
/// Finds the CUDA shared libraries. Imports name logical libraries ("tessera_cuda",
/// "tessera_nvrtc", "tessera_cublaslt"); the resolver maps each to the first soname that loads,
/// CUDA 13 before 12, first in <c>$TESSERA_CUDA_LIB_DIR</c> when set, then in the loader's path,
/// then in the usual CUDA install folders.
/// </summary>
public static class CudaLibraries
{
    /// <summary>Environment variable naming a folder to search before the system paths.</summary>
    public const string LibraryDirectoryVariable = "TESSERA_CUDA_LIB_DIR";

    internal const string Driver = "tessera_cuda";
    internal const string Nvrtc = "tessera_nvrtc";
    internal const string CublasLt = "tessera_cublaslt";

    private static readonly string[] SearchFolders =
    [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/nvidia/lib64",
    ];

    // Registration is once per assembly by the runtime's own rule; the module initializer does it
    // before any import runs. Nothing here changes afterwards.
#pragma warning disable CA2255
    [System.Runtime.CompilerServices.ModuleInitializer]
#pragma warning restore CA2255
    internal static void Register() =>
        NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);

    /// <summary>The sonames tried, in order, for a logical library.</summary>
    public static IReadOnlyList<string> Candidates(string logicalName) => logicalName switch
    {
        Driver => ["libcuda.so.1", "libcuda.so"],
        Nvrtc => ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
        CublasLt => ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"],
        _ => [logicalName],
    };

    /// <summary>
    /// Loads a logical library or throws <see cref="CudaUnavailableException"/> listing every
    /// place tried and what to install or set.
    /// </summary>
    public static IntPtr Load(string logicalName)
    {
        var tried = new List<string>();
        var handle = TryLoad(logicalName, tried);
        if (handle != IntPtr.Zero) return handle;
        string what = logicalName switch
        {
            Driver => "the NVIDIA driver library (libcuda.so.1): install the NVIDIA driver, or run on a machine with an NVIDIA GPU",
            Nvrtc => "NVRTC, the CUDA run-time compiler (libnvrtc.so.13 or .12): install the CUDA toolkit's nvrtc package",
            CublasLt => "cuBLASLt (libcublasLt.so.13 or .12): install the CUDA toolkit's cublas package",
            _ => logicalName,
        };
        throw new CudaUnavailableException(
            $"cannot load {what}; set {LibraryDirectoryVariable} to the folder that holds it. Tried: {string.Join(", ", tried)}");
    }

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName is not (Driver or Nvrtc or CublasLt)) return IntPtr.Zero;
        return TryLoad(libraryName, new List<string>());
    }

    private static IntPtr TryLoad(string logicalName, List<string> tried)
    {
        var folders = new List<string>();
        var custom = Environment.GetEnvironmentVariable(LibraryDirectoryVariable);
        if (!string.IsNullOrWhiteSpace(custom)) folders.Add(custom);
        foreach (var soname in Candidates(logicalName))
        {
            foreach (var folder in folders)
            {
                var path = Path.Combine(folder, soname);
                tried.Add(path);
                if (NativeLibrary.TryLoad(path, out var h)) return h;
            }
            tried.Add(soname);
            if (NativeLibrary.TryLoad(soname, out var handle)) return handle;
        }
        foreach (var soname in Candidates(logicalName))
            foreach (var folder in SearchFolders)
            {
                var path = Path.Combine(folder, soname);
                if (!File.Exists(path)) continue;
                tried.Add(path);
                if (NativeLibrary.TryLoad(path, out var h)) return h;
            }
        return IntPtr.Zero;
    }
}
