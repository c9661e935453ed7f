using Tessera.Cuda.Interop;
using Tessera.Cuda.Compilation;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The Hopper kernel files (<see cref="KernelLibrary.ArchitectureSpecificFiles"/>) compiled and assembled by NVRTC for
/// sm_90a exactly as the backend composes them, with the assembler's report (<c>--ptxas-options=-v</c>). NVRTC needs no GPU,
/// so this runs on any machine with the CUDA toolkit's NVRTC (libnvrtc.so.13 or .12: the GPU machine; a CPU machine with,
/// for instance, Debian's non-free libnvrtc12 on the library path) and skips, saying so, elsewhere (the CI machine). It is
/// the check of what the CPU emulation cannot see: the register allocation. Each kernel must show
/// <list type="bullet">
/// <item>no warning C7515: wgmma serialized, because an instruction other than a wgmma writes an accumulator register
/// inside a pipeline stage, so each product waits for the one before (every gemm_hopper kernel had it at session 44's
/// commits under NVRTC 12.4);</item>
/// <item>no more local memory (spill stores) than the file's bound: none for the products; 4 bytes, one register, for the
/// attention file, whose head-size-128 backward and one-warpgroup paged prefill spill that much under NVRTC 12.4.</item>
/// </list>
/// Every kernel's registers and spills are printed.
/// </summary>
public sealed class HopperKernelAssemblyTests
{
    [Theory]
    [InlineData("gemm_hopper.cu", 0)]
    [InlineData("decode_gemm_hopper.cu", 0)]
    [InlineData("flash_attention_hopper.cu", 4)]
    public void KernelsAssembleWithoutSerializedProductsOrSpills(string file, int spillBytesAllowed)
    {
        NvrtcCompiler compiler;
        try
        {
            compiler = new NvrtcCompiler();
        }
        catch (CudaUnavailableException e)
        {
            Assert.Skip($"NVRTC is not installed here, so {file} cannot be assembled: {e.Message}");
            return;
        }
        var options = KernelLibrary.OptionsFor("sm_90", file).Append("--ptxas-options=-v").ToList();
        compiler.CompileToCubin(KernelLibrary.ComposedSource(file), file, options, out string log);
        var report = AssemblerReport.Parse(log);
        var output = TestContext.Current.TestOutputHelper;
        output?.WriteLine($"NVRTC {compiler.Version}, {string.Join(' ', options)}");
        foreach (var k in report.Kernels) output?.WriteLine(report.Describe(k));
        Assert.True(report.Kernels.Count > 0, $"the assembler reported no kernel of {file}: {log}");
        Assert.True(report.Serialized.Count == 0, $"wgmma serialized (C7515) in {string.Join(", ", report.Serialized)}");
        var spilled = report.Kernels.Where(k => k.SpillStoreBytes > spillBytesAllowed).Select(k => $"{k.Name} ({k.SpillStoreBytes} bytes)").ToList();
        Assert.True(spilled.Count == 0, $"more than {spillBytesAllowed} bytes of spill stores in {string.Join(", ", spilled)}");
    }

    /// <summary>The parser reads the report's three line kinds as NVRTC 12.4's assembler prints them.</summary>
    [Fact]
    public void TheReportParserReadsKernelsSpillsAndSerialization()
    {
        const string log = """
            ptxas info    : 9 bytes gmem
            ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline stage in the function 'k_b'
            ptxas info    : Compiling entry function 'k_a' for 'sm_90a'
            ptxas info    : Function properties for k_a
            ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
            ptxas info    : Used 168 registers
            ptxas info    : Compiling entry function 'k_b' for 'sm_90a'
            ptxas info    : Function properties for k_b
            ptxas         .     16 bytes stack frame, 84 bytes spill stores, 88 bytes spill loads
            ptxas info    : Used 255 registers, 16 bytes cumulative stack size
            """;
        var report = AssemblerReport.Parse(log);
        Assert.Equal([("k_a", 168, 0), ("k_b", 255, 84)], report.Kernels.Select(k => (k.Name, k.Registers, k.SpillStoreBytes)));
        Assert.Equal(["k_b"], report.Serialized);
    }
}
