using Xunit;
using Tessera.Cuda.Compilation;
using Tessera.Tensors;

namespace Tessera.Tests.Cuda;

/// <summary>The on-disk kernel cache: entries round-trip, and any damaged entry reads as absent.</summary>
public sealed class KernelCacheTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "tessera-cache-test-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
    }

    private static byte[] Payload()
    {
        var b = new byte[1000];
        new Random(7).NextBytes(b);
        return b;
    }

    [Fact]
    public void EntryRoundTripsAndKeyDependsOnEveryInput()
    {
        var cache = new KernelCache(_folder);
        var key = KernelCache.Key("src", "sm_90", ["-a"], "13.0");
        cache.Write(key, "x.cu", Payload());
        Assert.Equal(Payload(), cache.TryRead(key, "x.cu"));
        Assert.NotEqual(key, KernelCache.Key("src ", "sm_90", ["-a"], "13.0"));
        Assert.NotEqual(key, KernelCache.Key("src", "sm_80", ["-a"], "13.0"));
        Assert.NotEqual(key, KernelCache.Key("src", "sm_90", ["-b"], "13.0"));
        Assert.NotEqual(key, KernelCache.Key("src", "sm_90", ["-a"], "12.8"));
    }

    [Theory]
    [InlineData("flip-payload")]
    [InlineData("truncate")]
    [InlineData("bad-magic")]
    [InlineData("wrong-key")]
    public void DamagedEntryReadsAsAbsent(string damage)
    {
        var cache = new KernelCache(_folder);
        var key = KernelCache.Key("src", "sm_90", [], "13.0");
        cache.Write(key, "x.cu", Payload());
        var path = cache.PathFor(key, "x.cu");
        var bytes = File.ReadAllBytes(path);
        switch (damage)
        {
            case "flip-payload": bytes[^10] ^= 0x40; break;
            case "truncate": bytes = bytes[..^1]; break;
            case "bad-magic": bytes[0] = (byte)'X'; break;
            case "wrong-key": bytes[20] ^= 1; break;
        }
        File.WriteAllBytes(path, bytes);
        Assert.Null(cache.TryRead(key, "x.cu"));
    }
}

/// <summary>NVRTC compilation and the cache on a GPU: errors name the file, damaged entries are rebuilt.</summary>
[Collection("cuda")]
public sealed class KernelCompilationTests(CudaFixture fixture) : CudaTestBase(fixture), IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "tessera-cache-gpu-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
    }

    private const string Source = "extern \"C\" __global__ void twice(float* x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.f; }";

    [Fact]
    public void BadSourceGivesAnNvrtcErrorNamingTheFile()
    {
        using var library = new KernelLibrary(Gpu.CudaDevice, new KernelCache(_folder));
        var e = Assert.Throws<KernelCompilationException>(() => library.Load("extern \"C\" __global__ void broken() { undeclared_thing(); }", "broken.cu"));
        Assert.Equal("broken.cu", e.FileName);
        Assert.Contains("broken.cu", e.Message);
        Assert.Contains("undeclared_thing", e.Log);
    }

    /// <summary>
    /// Precompiling three modules side by side (three threads of NVRTC) puts them in the cache: a second pass compiles none,
    /// and a new library on the same cache loads and launches from them without compiling; every module of the device is
    /// listed, the quantized KV caches' variants among them.
    /// </summary>
    [Fact]
    public void PrecompiledModulesAreLoadedWithoutCompiling()
    {
        var cache = new KernelCache(_folder);
        string[] modules = ["copy.cu", "reduce.cu", KernelLibrary.QuantizedKvModule("paged_attention.cu", DType.I8)];
        using (var first = new KernelLibrary(Gpu.CudaDevice, cache))
        {
            var done = first.Precompile(modules, parallelism: 3);
            Assert.All(done, d => Assert.True(d.Compiled && d.Error is null, $"{d.Module}: compiled {d.Compiled}, {d.Error}"));
            Assert.Equal(3, first.Compilations);
            Assert.All(first.Precompile(modules, parallelism: 3), d => Assert.False(d.Compiled, $"{d.Module} was compiled again"));
            Assert.Contains(KernelLibrary.QuantizedKvModule("paged_attention.cu", DType.I8), first.AllModules());
            Assert.Contains("gemv.cu", first.AllModules());
        }
        using var second = new KernelLibrary(Gpu.CudaDevice, cache);
        _ = second.Module(KernelLibrary.QuantizedKvModule("paged_attention.cu", DType.I8)).Function("paged_append_i8_f32");
        _ = second.Module("reduce.cu");
        Assert.Equal(0, second.Compilations);
    }

    [Fact]
    public void CorruptCacheEntryIsRebuiltNotTrusted()
    {
        var cache = new KernelCache(_folder);
        using (var first = new KernelLibrary(Gpu.CudaDevice, cache))
        {
            first.Load(Source, "twice.cu");
            Assert.Equal(1, first.Compilations);
        }
        using (var second = new KernelLibrary(Gpu.CudaDevice, cache))
        {
            second.Load(Source, "twice.cu");
            Assert.Equal(0, second.Compilations); // a valid entry is used
        }
        var path = Directory.GetFiles(_folder, "twice-*.cubin").Single();
        var bytes = File.ReadAllBytes(path);
        bytes[^100] ^= 0xff;
        File.WriteAllBytes(path, bytes);
        using (var third = new KernelLibrary(Gpu.CudaDevice, cache))
        {
            third.Load(Source, "twice.cu").Function("twice");
            Assert.Equal(1, third.Compilations); // the damaged entry was rebuilt
        }
        using var fourth = new KernelLibrary(Gpu.CudaDevice, cache);
        fourth.Load(Source, "twice.cu");
        Assert.Equal(0, fourth.Compilations); // and the rebuilt entry is valid again
    }
}
