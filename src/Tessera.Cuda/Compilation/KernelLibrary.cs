using System.Reflection;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;

namespace Tessera.Cuda.Compilation;

/// <summary>
/// The kernels of one device: .cu files embedded in this assembly, compiled by NVRTC for the
/// device's architecture on first use and cached on disk (<see cref="KernelCache"/>).
/// </summary>
public sealed class KernelLibrary : IDisposable
{
    private readonly CudaDevice _device;
    private readonly Dictionary<string, CudaModule> _modules = new();
    private readonly Lock _lock = new();

    /// <summary>Kernels for <paramref name="device"/>, cached in <paramref name="cache"/>.</summary>
    public KernelLibrary(CudaDevice device, KernelCache cache)
    {
        _device = device;
        Cache = cache;
        Compiler = new NvrtcCompiler();
    }

    /// <summary>The on-disk cache in use.</summary>
    public KernelCache Cache { get; }

    /// <summary>The compiler in use.</summary>
    public NvrtcCompiler Compiler { get; }

    private int _compilations;

    /// <summary>Number of NVRTC compilations this library ran (cache misses, <see cref="Precompile"/>'s included).</summary>
    public int Compilations => Volatile.Read(ref _compilations);

    /// <summary>NVRTC options for this device.</summary>
    public IReadOnlyList<string> Options => OptionsFor("");

    /// <summary>
    /// Kernel files written for one architecture's own instructions (wgmma on compute capability 9.0), compiled for its
    /// architecture-specific target (sm_90a), which runs on that architecture only; every other file keeps the portable one.
    /// </summary>
    public static IReadOnlySet<string> ArchitectureSpecificFiles { get; } = new HashSet<string> { "flash_attention_hopper.cu", "decode_gemm_hopper.cu", "gemm_hopper.cu" };

    /// <summary>
    /// Kernel files compiled after another file whose definitions they use, as modules of their own (so that the other file's
    /// module does not depend on them): sampling_cluster.cu after sampling.cu; decode_gemm.cu and moe.cu after decode_gemm.cuh
    /// (the decode products' template, which moe.cu's tensor-core expert products instantiate over their experts' rows).
    /// </summary>
    public static IReadOnlyDictionary<string, string[]> FilesBefore { get; } = new Dictionary<string, string[]>
    {
        ["sampling_cluster.cu"] = ["sampling.cu"],
        ["decode_gemm.cu"] = ["decode_gemm.cuh"],
        ["moe.cu"] = ["decode_gemm.cuh"],
    };

    /// <summary>
    /// Kernel files that also hold the quantized KV caches' kernels (<c>_i8</c> instantiations over an I8 pool and its scales
    /// behind <c>#ifdef TESSERA_INT8_KV</c>, <c>_f8</c> ones over an F8E4M3 pool behind <c>#ifdef TESSERA_FP8_KV</c>): a 16-bit
    /// cache loads the file's plain module, which compiles neither, and a quantized cache loads
    /// <see cref="QuantizedKvModule"/>, the file compiled with its code's switch on (one code a module: an int8 cache never
    /// compiles the FP8 forms, nor the reverse). Why: with both in one module (session 26, a fresh H200), the first int8 paged
    /// attention test took 130 s, nearly all of it compiling, where the first paged serving test before the int8 kernels took
    /// 54; every 16-bit server and training run would have paid that on its first start.
    /// </summary>
    public static IReadOnlySet<string> QuantizedKvFiles { get; } = new HashSet<string> { "paged_attention.cu", "flash_attention.cu", "flash_attention_hopper.cu" };

    // The variants' module-name suffixes and the switches they define, per quantized pool dtype.
    private static readonly (DType PoolDType, string Suffix, string Switch)[] KvVariants =
        [(DType.I8, "#int8-kv", "TESSERA_INT8_KV"), (DType.F8E4M3, "#fp8-kv", "TESSERA_FP8_KV")];

    /// <summary>The module name of <paramref name="fileName"/> compiled with the kernels over a quantized pool of
    /// <paramref name="poolDType"/> (I8 or F8E4M3; a <see cref="QuantizedKvFiles"/> entry).</summary>
    /// <exception cref="ArgumentException">The file holds no quantized KV cache kernels, or <paramref name="poolDType"/> is no
    /// quantized pool's.</exception>
    public static string QuantizedKvModule(string fileName, DType poolDType)
    {
        if (!QuantizedKvFiles.Contains(fileName))
            throw new ArgumentException($"kernel file '{fileName}' holds no quantized KV cache kernels; those that do: {string.Join(", ", QuantizedKvFiles)}", nameof(fileName));
        foreach (var v in KvVariants) if (v.PoolDType == poolDType) return fileName + v.Suffix;
        throw new ArgumentException($"a {poolDType} KV pool has no kernels of its own; quantized pools are {string.Join(" or ", KvVariants.Select(v => v.PoolDType))}", nameof(poolDType));
    }

    /// <summary>Every module name beyond the plain files: each <see cref="QuantizedKvFiles"/> entry's
    /// <see cref="QuantizedKvModule"/> for I8 and for F8E4M3.</summary>
    public static IEnumerable<string> VariantModules =>
        QuantizedKvFiles.Order(StringComparer.Ordinal).SelectMany(f => KvVariants.Select(v => QuantizedKvModule(f, v.PoolDType)));

    /// <summary>The kernel file of module <paramref name="moduleName"/> (a file name, or <see cref="QuantizedKvModule"/>'s), and
    /// the switch its variant defines (null for a plain file).</summary>
    private static (string File, string? Switch) Parse(string moduleName)
    {
        foreach (var v in KvVariants)
            if (moduleName.EndsWith(v.Suffix, StringComparison.Ordinal))
            {
                string file = moduleName[..^v.Suffix.Length];
                _ = QuantizedKvModule(file, v.PoolDType);   // a variant of a file without quantized KV kernels is refused, naming it
                return (file, v.Switch);
            }
        return (moduleName, null);
    }

    /// <summary>
    /// The source NVRTC compiles for module <paramref name="moduleName"/> (a kernel file, or <see cref="QuantizedKvModule"/> of
    /// one): <c>#define TESSERA_INT8_KV</c> or <c>TESSERA_FP8_KV</c> for a quantized-KV variant, then common.cuh, then hopper.cuh
    /// (the wgmma helpers) for an <see cref="ArchitectureSpecificFiles"/> entry, then its <see cref="FilesBefore"/>, then the file, each after a #line that keeps
    /// compiler messages pointing into it.
    /// </summary>
    public static string ComposedSource(string moduleName)
    {
        var (fileName, kvSwitch) = Parse(moduleName);
        var parts = (ArchitectureSpecificFiles.Contains(fileName) ? new[] { "common.cuh", "hopper.cuh" } : ["common.cuh"])
            .Concat(FilesBefore.TryGetValue(fileName, out var before) ? before : []).Append(fileName);
        return (kvSwitch is null ? "" : $"#define {kvSwitch} 1\n") + string.Concat(parts.Select(f => $"#line 1 \"{f}\"\n" + EmbeddedSource(f) + "\n"));
    }

    /// <summary>NVRTC options for module <paramref name="moduleName"/> on this device: sm_90a for an
    /// <see cref="ArchitectureSpecificFiles"/> entry (or its variant) on a 9.0 device, the device's architecture otherwise.</summary>
    public IReadOnlyList<string> OptionsFor(string moduleName) => OptionsFor(_device.Architecture, moduleName);

    /// <summary>NVRTC options for module <paramref name="moduleName"/> on a device of <paramref name="deviceArchitecture"/>
    /// ("sm_90"): what <see cref="OptionsFor(string)"/> gives there, for compiling without the device.</summary>
    public static IReadOnlyList<string> OptionsFor(string deviceArchitecture, string moduleName)
    {
        string architecture = deviceArchitecture;
        if (architecture == "sm_90" && ArchitectureSpecificFiles.Contains(Parse(moduleName).File)) architecture += "a";
        return [$"--gpu-architecture={architecture}", "--std=c++17", "-default-device"];
    }

    /// <summary>The embedded source of kernel file <paramref name="fileName"/> (e.g. "elementwise.cu").</summary>
    public static string EmbeddedSource(string fileName)
    {
        var assembly = typeof(KernelLibrary).Assembly;
        using var stream = assembly.GetManifestResourceStream("Tessera.Cuda.Kernels." + fileName)
            ?? throw new FileNotFoundException($"kernel source '{fileName}' is not embedded in {assembly.GetName().Name}; embedded: {string.Join(", ", assembly.GetManifestResourceNames())}");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>The module compiled from embedded file <paramref name="fileName"/> (or the variant <see cref="QuantizedKvModule"/> names).</summary>
    public CudaModule Module(string fileName)
    {
        lock (_lock)
        {
            if (_modules.TryGetValue(fileName, out var m)) return m;
            // Every kernel file starts from the shared definitions (ComposedSource).
            var source = ComposedSource(fileName);
            m = Load(source, fileName);
            _modules[fileName] = m;
            return m;
        }
    }

    /// <summary>
    /// Compiles (or takes from the cache) and loads <paramref name="source"/>. A cache entry that
    /// is invalid or that the driver will not load is rebuilt.
    /// </summary>
    public CudaModule Load(string source, string fileName)
    {
        var options = OptionsFor(fileName);
        var key = KernelCache.Key(source, _device.Architecture, options, Compiler.Version);
        var cached = Cache.TryRead(key, fileName);
        if (cached is not null)
        {
            var module = CudaModule.TryLoad(_device, cached, fileName, out _);
            if (module is not null) return module;
        }
        var cubin = Compiler.CompileToCubin(source, fileName, options);
        Interlocked.Increment(ref _compilations);
        var fresh = CudaModule.TryLoad(_device, cubin, fileName, out int status)
            ?? throw Interop.CudaDriver.Error(status, "cuModuleLoadData", $"fresh cubin of {fileName} for {_device.Architecture}");
        Cache.Write(key, fileName, cubin);
        return fresh;
    }

    /// <summary>
    /// Every module this device can load: each embedded kernel file (the <see cref="ArchitectureSpecificFiles"/> only on
    /// compute capability 9.0, the architecture they are written for) and the <see cref="VariantModules"/> of those.
    /// </summary>
    public IReadOnlyList<string> AllModules()
    {
        const string prefix = "Tessera.Cuda.Kernels.";
        var files = typeof(KernelLibrary).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith(prefix, StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal))
            .Select(n => n[prefix.Length..])
            .Where(f => !ArchitectureSpecificFiles.Contains(f) || _device.Architecture == "sm_90")
            .Order(StringComparer.Ordinal)
            .ToList();
        return [.. files, .. VariantModules.Where(m => files.Contains(Parse(m).File))];
    }

    /// <summary>
    /// Compiles the modules not yet in the cache, <paramref name="parallelism"/> at a time (default: the host's processors),
    /// into the cache only (nothing is loaded): a later <see cref="Module"/> finds them there. Modules compile lazily, one at a
    /// time, as kernels are first launched, and NVRTC takes seconds to minutes a file, so a fresh machine's first run spends
    /// minutes compiling in series what its processors can compile side by side. Each module's outcome is reported: taken
    /// from the cache, compiled (with its seconds), or the compiler's error (a file that does not compile fails its first
    /// launch all the same; here it does not stop the others).
    /// </summary>
    public IReadOnlyList<KernelPrecompilation> Precompile(IEnumerable<string>? modules = null, int parallelism = 0)
    {
        var names = (modules ?? AllModules()).ToList();
        var results = new KernelPrecompilation[names.Count];
        var options = new ParallelOptions { MaxDegreeOfParallelism = parallelism > 0 ? parallelism : Environment.ProcessorCount };
        Parallel.For(0, names.Count, options, i =>
        {
            string name = names[i];
            var started = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                var source = ComposedSource(name);
                var compileOptions = OptionsFor(name);
                var key = KernelCache.Key(source, _device.Architecture, compileOptions, Compiler.Version);
                if (Cache.TryRead(key, name) is not null)
                {
                    results[i] = new KernelPrecompilation(name, Compiled: false, started.Elapsed, Error: null);
                    return;
                }
                Cache.Write(key, name, Compiler.CompileToCubin(source, name, compileOptions));
                Interlocked.Increment(ref _compilations);
                results[i] = new KernelPrecompilation(name, Compiled: true, started.Elapsed, Error: null);
            }
            catch (KernelCompilationException e)
            {
                results[i] = new KernelPrecompilation(name, Compiled: false, started.Elapsed, e.Message);
            }
        });
        return results;
    }

    /// <summary>Unloads every module.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var m in _modules.Values) m.Dispose();
            _modules.Clear();
        }
    }
}
