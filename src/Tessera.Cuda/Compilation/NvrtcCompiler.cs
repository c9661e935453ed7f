using System.Runtime.InteropServices;
using System.Text;
using Tessera.Cuda.Interop;
using static Tessera.Cuda.Interop.Nvrtc;

namespace Tessera.Cuda.Compilation;

/// <summary>Compiles CUDA C++ source to a cubin for one architecture with NVRTC.</summary>
public sealed unsafe class NvrtcCompiler
{
    /// <summary>Loads NVRTC; throws <see cref="CudaUnavailableException"/> when it is missing.</summary>
    public NvrtcCompiler()
    {
        CudaLibraries.Load(CudaLibraries.Nvrtc);
        int major, minor;
        Check(nvrtcVersion(&major, &minor), "nvrtcVersion");
        Version = $"{major}.{minor}";
    }

    /// <summary>NVRTC's version, "major.minor"; part of the kernel cache key.</summary>
    public string Version { get; }

    /// <summary>
    /// Compiles <paramref name="source"/> (named <paramref name="fileName"/> in diagnostics) with
    /// <paramref name="options"/>; returns the cubin. Throws <see cref="KernelCompilationException"/>
    /// with NVRTC's log when the source does not compile.
    /// </summary>
    public byte[] CompileToCubin(string source, string fileName, IReadOnlyList<string> options) =>
        CompileToCubin(source, fileName, options, out _);

    /// <summary>
    /// As <see cref="CompileToCubin(string, string, IReadOnlyList{string})"/>, and hands back NVRTC's log of a successful
    /// compilation too (its warnings; with <c>--ptxas-options=-v</c>, the assembler's registers and spills per kernel).
    /// </summary>
    public byte[] CompileToCubin(string source, string fileName, IReadOnlyList<string> options, out string log)
    {
        IntPtr program;
        var src = Utf8Z(source);
        var name = Utf8Z(fileName);
        fixed (byte* s = src, n = name)
            Check(nvrtcCreateProgram(&program, s, n, 0, null, null), "nvrtcCreateProgram", fileName);
        var handles = new List<GCHandle>();
        try
        {
            var optionPointers = new byte*[options.Count];
            for (int i = 0; i < options.Count; i++)
            {
                var h = GCHandle.Alloc(Utf8Z(options[i]), GCHandleType.Pinned);
                handles.Add(h);
                optionPointers[i] = (byte*)h.AddrOfPinnedObject();
            }
            int status;
            fixed (byte** o = optionPointers) status = nvrtcCompileProgram(program, options.Count, o);
            if (status == NVRTC_ERROR_COMPILATION) throw new KernelCompilationException(fileName, Log(program));
            Check(status, "nvrtcCompileProgram", fileName);
            nuint size;
            Check(nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize", fileName);
            if (size == 0)
                throw new KernelCompilationException(fileName, "NVRTC produced no cubin: the --gpu-architecture option must name a real architecture (sm_XX), not a virtual one (compute_XX)");
            var cubin = new byte[size];
            fixed (byte* c = cubin) Check(nvrtcGetCUBIN(program, c), "nvrtcGetCUBIN", fileName);
            log = Log(program);
            return cubin;
        }
        finally
        {
            foreach (var h in handles) h.Free();
            nvrtcDestroyProgram(&program);
        }
    }

    private static string Log(IntPtr program)
    {
        nuint size;
        if (nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size <= 1) return "(no log)";
        var log = new byte[size];
        fixed (byte* l = log) nvrtcGetProgramLog(program, l);
        return Encoding.UTF8.GetString(log, 0, (int)size - 1).Trim();
    }

    private static byte[] Utf8Z(string s)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
        Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }
}
