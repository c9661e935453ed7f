using System.Globalization;
using Tessera.Cuda.Compilation;
using Tessera.Cuda.Runtime;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Compiles every kernel module of the device that is not yet in the kernel cache (<see cref="KernelLibrary.Precompile"/>),
/// side by side on the host's processors, before a run that would otherwise compile them one at a time as their kernels are
/// first launched (a fresh GPU machine has an empty cache; scripts/gpu-bench.sh runs this first). Prints a table of the
/// modules (compiled or cached, seconds, NVRTC's error) and the wall time; exit code 1 when a module does not compile.
/// <para>Usage: gpu-compile [--parallel N] [--modules a.cu,b.cu#variant,...] (default: the host's processors, every module; a
/// short device call names only the modules its runs launch, and the rest compile at their first launch). The cache is the default one
/// (<c>TESSERA_KERNEL_CACHE</c>, else the user's cache folder).</para>
/// </summary>
public static class KernelPrecompileBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        int parallel = 0;
        string[]? modules = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--parallel": parallel = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--modules": modules = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries); break;
                default: Console.Error.WriteLine($"gpu-compile: unknown argument '{args[i]}'; usage: gpu-compile [--parallel N] [--modules a.cu,b.cu]"); return 2;
            }
        }
        using var device = CudaDevice.Open();
        using var library = new KernelLibrary(device, new KernelCache());
        var wall = System.Diagnostics.Stopwatch.StartNew();
        var done = library.Precompile(modules, parallelism: parallel);
        wall.Stop();
        Console.WriteLine($"| module | {device.Architecture} | seconds | error |");
        Console.WriteLine("|---|---|---:|---|");
        foreach (var d in done.OrderByDescending(d => d.Elapsed))
            Console.WriteLine($"| {d.Module} | {(d.Error is not null ? "failed" : d.Compiled ? "compiled" : "cached")} | {d.Elapsed.TotalSeconds:F1} | {d.Error?.Split('\n')[0]} |");
        Console.WriteLine($"{done.Count(d => d.Compiled)} of {done.Count} modules compiled in {wall.Elapsed.TotalSeconds:F1} s wall, " +
            $"{done.Sum(d => d.Elapsed.TotalSeconds):F1} s of compiling, {(parallel > 0 ? parallel : Environment.ProcessorCount)} at a time; cache {library.Cache.Folder}");
        return done.Any(d => d.Error is not null) ? 1 : 0;
    }
}
