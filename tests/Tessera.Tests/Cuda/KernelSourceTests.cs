using System.Diagnostics;
using System.Text.RegularExpressions;
using Tessera.Cuda.Compilation;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Every embedded kernel file compiles for the device without a GPU: the file as NVRTC gets it (common.cuh, then the file)
/// through clang's CUDA front end to PTX, device code only, against <see cref="Prelude"/> (the few CUDA built-ins NVRTC
/// provides without headers, declared). NVRTC runs only on the GPU machine, where a kernel that does not compile breaks
/// every op of its file; this catches such errors (an undeclared identifier, a helper missing from common.cuh, a type error
/// in a template instantiated by a kernel) on any machine with LLVM's clang. It checks C++ and CUDA semantics, not PTX
/// (inline assembly passes through unchecked) and not what only NVRTC's headers define; __CUDA_ARCH__ is set to 900, so
/// the sm_90 branches are compiled. Skips, saying why, where no clang++ is found.
/// </summary>
public sealed class KernelSourceTests
{
    /// <summary>The built-ins NVRTC declares for device code (-default-device, no CUDA headers), as clang needs them.</summary>
    private const string Prelude = """
        #define __global__ __attribute__((global))
        #define __device__ __attribute__((device))
        #define __host__ __attribute__((host))
        #define __shared__ __attribute__((shared))
        #define __constant__ __attribute__((constant))
        #define __forceinline__ __inline__ __attribute__((always_inline))
        #define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
        #define __grid_constant__   /* NVRTC's kernel-parameter qualifier, which this clang does not know */
        #include <__clang_cuda_builtin_vars.h>
        typedef unsigned long size_t;
        struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
        extern "C" __device__ float expf(float);
        extern "C" __device__ float exp2f(float);
        extern "C" __device__ float logf(float);
        extern "C" __device__ float log2f(float);
        extern "C" __device__ float tanhf(float);
        extern "C" __device__ float sqrtf(float);
        extern "C" __device__ float rsqrtf(float);
        extern "C" __device__ float fmaxf(float, float);
        extern "C" __device__ float fminf(float, float);
        extern "C" __device__ float fabsf(float);
        extern "C" __device__ float fmaf(float, float, float);
        extern "C" __device__ double sin(double);
        extern "C" __device__ double cos(double);
        extern "C" __device__ void sincos(double, double*, double*);
        extern "C" __device__ double pow(double, double);
        extern "C" __device__ double log(double);
        extern "C" __device__ double exp(double);
        extern "C" __device__ double sqrt(double);
        extern "C" __device__ int __float_as_int(float);
        extern "C" __device__ float __int_as_float(int);
        extern "C" __device__ unsigned __float_as_uint(float);
        extern "C" __device__ float __uint_as_float(unsigned);
        extern "C" __device__ void __syncthreads();
        extern "C" __device__ void __threadfence();
        __device__ void __syncwarp(unsigned mask = 0xffffffffu);
        __device__ int max(int, int);
        __device__ int min(int, int);
        __device__ long long max(long long, long long);
        __device__ long long min(long long, long long);
        __device__ float atomicAdd(float*, float);
        __device__ int atomicAdd(int*, int);
        __device__ unsigned atomicAdd(unsigned*, unsigned);
        __device__ unsigned long long atomicAdd(unsigned long long*, unsigned long long);
        __device__ unsigned atomicCAS(unsigned*, unsigned, unsigned);
        __device__ unsigned atomicInc(unsigned*, unsigned);
        __device__ float __shfl_xor_sync(unsigned, float, int, int w = 32);
        __device__ double __shfl_xor_sync(unsigned, double, int, int w = 32);
        __device__ int __shfl_xor_sync(unsigned, int, int, int w = 32);
        __device__ unsigned __shfl_xor_sync(unsigned, unsigned, int, int w = 32);
        __device__ unsigned long long __shfl_xor_sync(unsigned, unsigned long long, int, int w = 32);
        __device__ float __shfl_sync(unsigned, float, int, int w = 32);
        __device__ int __shfl_sync(unsigned, int, int, int w = 32);
        __device__ int __shfl_up_sync(unsigned, int, unsigned, int w = 32);
        __device__ unsigned long long __shfl_up_sync(unsigned, unsigned long long, unsigned, int w = 32);
        __device__ unsigned __shfl_sync(unsigned, unsigned, int, int w = 32);
        __device__ unsigned long long __shfl_sync(unsigned, unsigned long long, int, int w = 32);
        __device__ unsigned __ballot_sync(unsigned, int);
        __device__ int __ffs(int);
        __device__ int __popc(unsigned);
        __device__ float __shfl_down_sync(unsigned, float, unsigned, int w = 32);

        """;

    /// <summary>The kernel files embedded in Tessera.Cuda (each compiled by NVRTC on its own, after common.cuh), and the
    /// variant modules compiled from some of them (<see cref="KernelLibrary.VariantModules"/>: the int8 and fp8 KV caches' kernels).</summary>
    public static TheoryData<string> KernelFiles()
    {
        const string prefix = "Tessera.Cuda.Kernels.";
        var files = new TheoryData<string>();
        foreach (var name in typeof(KernelLibrary).Assembly.GetManifestResourceNames().Order(StringComparer.Ordinal))
            if (name.StartsWith(prefix, StringComparison.Ordinal) && name.EndsWith(".cu", StringComparison.Ordinal)) files.Add(name[prefix.Length..]);
        foreach (var module in KernelLibrary.VariantModules) files.Add(module);
        return files;
    }

    [Theory]
    [MemberData(nameof(KernelFiles))]
    public async Task KernelFileCompilesToPtxWithClangsCudaFrontEnd(string file)
    {
        var kernels = await CompileToPtx(file, 900);
        Assert.Contains(".entry", kernels);                          // at least one kernel came out
        // The quantized KV caches' kernels come out of their code's variant module alone: a plain module never pays their
        // compile, and an int8 module never pays the fp8 kernels' (nor the reverse).
        bool int8Module = file.EndsWith("#int8-kv", StringComparison.Ordinal), fp8Module = file.EndsWith("#fp8-kv", StringComparison.Ordinal);
        Assert.True(int8Module || fp8Module || file.EndsWith(".cu", StringComparison.Ordinal), $"{file}: an unknown module kind");
        Assert.Equal(int8Module, Regex.IsMatch(kernels, @"\.entry\s+paged_\w*_i8_"));
        Assert.Equal(fp8Module, Regex.IsMatch(kernels, @"\.entry\s+paged_\w*_f8_"));   // gemv.cu's FP8 weights' kernels are gemv_stream_f8_*
    }

    /// <summary>
    /// moe.cu compiled for a device before compute capability 9.0 (__CUDA_ARCH__ 800) holds its CUDA-core kernels and none of the
    /// tensor-core expert products (<c>moe_gemm_*</c>), whose K slices are thread-block clusters: no cluster instruction may reach
    /// an Ampere or Ada module, where it would fail the whole file's build and with it every MoE op.
    /// </summary>
    [Fact]
    public async Task MoeModuleBeforeHopperHoldsNoClusterCode()
    {
        var kernels = await CompileToPtx("moe.cu", 800);
        Assert.Matches(@"\.entry\s+moe_expert_swiglu_bf16", kernels);
        Assert.DoesNotMatch(@"\.entry\s+moe_gemm_", kernels);
        Assert.DoesNotContain("barrier.cluster", kernels, StringComparison.Ordinal);
        Assert.Matches(@"\.entry\s+moe_gemm_swiglu_bf16", await CompileToPtx("moe.cu", 900));
    }

    /// <summary>The PTX of module <paramref name="file"/> as clang's CUDA front end makes it with __CUDA_ARCH__ set to
    /// <paramref name="arch"/> (device code only, against <see cref="Prelude"/>); skips without clang, fails on a compile error.</summary>
    private static async Task<string> CompileToPtx(string file, int arch)
    {
        var clang = FindClang();
        if (clang is null) Assert.Skip("no clang++ on PATH or under /usr/lib/llvm-*/bin: the kernel sources' compile check needs LLVM's clang (apt-get install clang)");
        var dir = Directory.CreateTempSubdirectory("tessera-kernel-check-");
        try
        {
            string source = Path.Combine(dir.FullName, file.Replace('#', '.') + (file.EndsWith(".cu", StringComparison.Ordinal) ? "" : ".cu")),
                ptx = Path.ChangeExtension(source, ".ptx");
            File.WriteAllText(source, Prelude + KernelLibrary.ComposedSource(file));
            var start = new ProcessStartInfo(clang)
            {
                RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false,
            };
            foreach (var arg in new[] { "-x", "cuda", "--cuda-device-only", "-nocudainc", "-nocudalib", "--cuda-gpu-arch=sm_80",
                         "-U__CUDA_ARCH__", $"-D__CUDA_ARCH__={arch}", "-std=c++17", "-Wno-c++11-narrowing", "-S", "-o", ptx, source })
                start.ArgumentList.Add(arg);
            using var process = Process.Start(start)!;
            var errors = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            await process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            Assert.True(process.WaitForExit(TimeSpan.FromSeconds(120)), $"{clang} did not finish {file} within 120 s");
            var messages = (await errors).Split('\n').Where(l => l.Contains("error", StringComparison.Ordinal)).Take(20);
            Assert.True(process.ExitCode == 0, $"{file} does not compile for the device ({clang}, __CUDA_ARCH__ {arch}, exit {process.ExitCode}):\n{string.Join('\n', messages)}");
            return File.ReadAllText(ptx);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    /// <summary>
    /// A quantized KV cache's module of a kernel file is the file compiled with its code's switch defined
    /// (<c>TESSERA_INT8_KV</c> for I8, <c>TESSERA_FP8_KV</c> for F8E4M3), and only the files holding such kernels have them:
    /// another file's, or a dtype that is no quantized pool's, is refused, naming what would do.
    /// </summary>
    [Theory]
    [InlineData(DType.I8, "TESSERA_INT8_KV", "TESSERA_FP8_KV", "#int8-kv")]
    [InlineData(DType.F8E4M3, "TESSERA_FP8_KV", "TESSERA_INT8_KV", "#fp8-kv")]
    public void QuantizedKvModulesAreTheFilesWithTheirCodesSwitchOnAndNoOthers(DType poolDType, string on, string off, string suffix)
    {
        string module = KernelLibrary.QuantizedKvModule("paged_attention.cu", poolDType);
        Assert.Equal("paged_attention.cu" + suffix, module);
        Assert.StartsWith($"#define {on} 1\n", KernelLibrary.ComposedSource(module), StringComparison.Ordinal);
        Assert.DoesNotContain($"{off} 1", KernelLibrary.ComposedSource(module), StringComparison.Ordinal);
        Assert.DoesNotContain($"{on} 1", KernelLibrary.ComposedSource("paged_attention.cu"), StringComparison.Ordinal);
        Assert.Contains(module, KernelLibrary.VariantModules);
        var e = Assert.Throws<ArgumentException>(() => KernelLibrary.QuantizedKvModule("gemv.cu", poolDType));
        Assert.Contains("paged_attention.cu", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => KernelLibrary.ComposedSource("gemv.cu" + suffix));
        Assert.Contains("I8 or F8E4M3", Assert.Throws<ArgumentException>(() => KernelLibrary.QuantizedKvModule("paged_attention.cu", DType.BF16)).Message,
            StringComparison.Ordinal);
    }

    /// <summary>clang++ on PATH, else the newest /usr/lib/llvm-N/bin/clang++ (Debian installs LLVM there), else null.</summary>
    private static string? FindClang()
    {
        foreach (var folder in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(folder, "clang++");
            if (File.Exists(candidate)) return candidate;
        }
        if (!Directory.Exists("/usr/lib")) return null;
        return Directory.GetDirectories("/usr/lib", "llvm-*")
            .Select(d => (Dir: d, Version: int.TryParse(Path.GetFileName(d)["llvm-".Length..], out int v) ? v : 0))
            .OrderByDescending(x => x.Version)
            .Select(x => Path.Combine(x.Dir, "bin", "clang++"))
            .FirstOrDefault(File.Exists);
    }

    /// <summary>A kernel file compiles after the file whose definitions it uses (sampling_cluster.cu after sampling.cu; decode_gemm.cu
    /// and moe.cu after decode_gemm.cuh, the decode products' template), as a module of its own: the earlier file's module
    /// does not hold it.</summary>
    [Theory]
    [InlineData("sampling_cluster.cu", "sampling.cu")]
    [InlineData("decode_gemm.cu", "decode_gemm.cuh")]
    [InlineData("moe.cu", "decode_gemm.cuh")]
    public void AModuleHoldsTheFileItUsesBeforeIt(string file, string before)
    {
        string source = KernelLibrary.ComposedSource(file);
        int common = source.IndexOf("#line 1 \"common.cuh\"", StringComparison.Ordinal),
            earlier = source.IndexOf($"#line 1 \"{before}\"", StringComparison.Ordinal),
            own = source.IndexOf($"#line 1 \"{file}\"", StringComparison.Ordinal);
        Assert.True(common >= 0 && common < earlier && earlier < own, $"common.cuh, {before}, {file} in that order");
        if (before.EndsWith(".cu", StringComparison.Ordinal))
            Assert.DoesNotContain(file, KernelLibrary.ComposedSource(before), StringComparison.Ordinal);
    }
}
