using Tessera.Cuda.Runtime;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda.Compilation;

/// <summary>A loaded cubin and the kernels looked up in it (by their extern "C" names).</summary>
public sealed unsafe class CudaModule : IDisposable
{
    private readonly CudaDevice _device;
    private readonly Dictionary<string, IntPtr> _functions = new();
    private readonly Lock _lock = new();
    private IntPtr _module;

    private CudaModule(CudaDevice device, IntPtr module, string fileName)
    {
        _device = device;
        _module = module;
        FileName = fileName;
    }

    /// <summary>The source file the module was compiled from.</summary>
    public string FileName { get; }

    /// <summary>Loads a cubin; returns null when the driver rejects the image (a corrupt or foreign cache entry).</summary>
    internal static CudaModule? TryLoad(CudaDevice device, byte[] cubin, string fileName, out int status)
    {
        device.MakeCurrent();
        IntPtr module;
        fixed (byte* image = cubin) status = cuModuleLoadData(&module, image);
        return status == CUDA_SUCCESS ? new CudaModule(device, module, fileName) : null;
    }

    /// <summary>The kernel named <paramref name="name"/>; throws naming the file when it is not there.</summary>
    internal IntPtr Function(string name)
    {
        lock (_lock)
        {
            if (_functions.TryGetValue(name, out var f)) return f;
            _device.MakeCurrent();
            Check(cuModuleGetFunction(&f, _module, name), "cuModuleGetFunction", $"kernel '{name}' in {FileName}");
            _functions[name] = f;
            return f;
        }
    }

    /// <summary>
    /// What the compiler gave kernel <paramref name="name"/> (registers, local memory, static shared memory) and how many of its
    /// CTAs of <paramref name="threads"/> threads and <paramref name="dynamicSharedBytes"/> of dynamic shared memory fit on one
    /// SM at the largest shared-memory carveout (the one the backend asks for).
    /// </summary>
    public KernelResources Resources(string name, int threads, int dynamicSharedBytes)
    {
        var f = Function(name);
        _device.MakeCurrent();
        int registers, local, shared, ctas;
        Check(cuFuncGetAttribute(&registers, CU_FUNC_ATTRIBUTE_NUM_REGS, f), "cuFuncGetAttribute", name);
        Check(cuFuncGetAttribute(&local, CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, f), "cuFuncGetAttribute", name);
        Check(cuFuncGetAttribute(&shared, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f), "cuFuncGetAttribute", name);
        Check(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100), "cuFuncSetAttribute", name);
        if (dynamicSharedBytes + shared > 48 * 1024)   // past 48 KB in all, the dynamic part must be allowed
            Check(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamicSharedBytes), "cuFuncSetAttribute", name);
        Check(cuOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, f, threads, (nuint)dynamicSharedBytes), "cuOccupancyMaxActiveBlocksPerMultiprocessor", name);
        return new KernelResources(registers, local, shared, ctas);
    }

    /// <summary>
    /// How many CTAs of kernel <paramref name="name"/> with <paramref name="threads"/> threads and <paramref name="dynamicSharedBytes"/>
    /// of dynamic shared memory fit on one SM as the kernel is launched (its own carveout preference left alone, unlike
    /// <see cref="Resources"/>).
    /// </summary>
    public int ResidentCtas(string name, int threads, int dynamicSharedBytes)
    {
        var f = Function(name);
        _device.MakeCurrent();
        int ctas;
        Check(cuOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, f, threads, (nuint)dynamicSharedBytes), "cuOccupancyMaxActiveBlocksPerMultiprocessor", name);
        return ctas;
    }

    /// <summary>Unloads the module.</summary>
    public void Dispose()
    {
        if (_module == IntPtr.Zero) return;
        _device.MakeCurrent();
        cuModuleUnload(_module);
        _module = IntPtr.Zero;
    }
}
