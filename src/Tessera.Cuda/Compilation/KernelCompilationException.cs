namespace Tessera.Cuda.Compilation;

/// <summary>NVRTC rejected a kernel source; the message names the file and holds the compiler's log.</summary>
public sealed class KernelCompilationException : Exception
{
    /// <summary>Creates the exception for <paramref name="fileName"/> with NVRTC's <paramref name="log"/>.</summary>
    public KernelCompilationException(string fileName, string log)
        : base($"NVRTC could not compile {fileName}:\n{log}")
    {
        FileName = fileName;
        Log = log;
    }

    /// <summary>The kernel source file, e.g. "elementwise.cu".</summary>
    public string FileName { get; }

    /// <summary>NVRTC's compile log.</summary>
    public string Log { get; }
}
