using Tessera.Cuda.Interop;
using Tessera.Cuda.Compilation;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Every kernel module (<see cref="KernelSourceTests.KernelFiles"/>: each embedded file and the quantized-KV variants)
/// compiled and assembled by NVRTC for an H100 or H200 (sm_90; the Hopper files for sm_90a) exactly as the backend composes
/// it, with the assembler's report (<c>--ptxas-options=-v</c>). NVRTC needs no GPU, so this runs on any machine with the
/// CUDA toolkit's NVRTC (libnvrtc.so.13 or .12: the GPU machine; a CPU machine with, for instance, Debian's non-free
/// libnvrtc12 on the library path) and skips, saying so, elsewhere (the CI machine). It checks what the clang front end
/// (<see cref="KernelSourceTests"/>) and the CPU emulation cannot see: NVRTC's own compile, and the register allocation.
/// Each kernel must show
/// <list type="bullet">
/// <item>no wgmma serialized, so that each product waits for the one before: warning C7515 (an instruction other than a
/// wgmma writes an accumulator register inside a pipeline stage: every gemm_hopper kernel had it at session 44's commits
/// under NVRTC 12.4), C7513 (an input register of a product in flight written: session 47's
/// pipelined attention forward had it while its causal mask branched per element) or C7512 (too few registers), but for the kernels of
/// <see cref="SerializationAllowed"/>;</item>
/// <item>no more spill stores than its module's bound (<see cref="SpillBytesAllowed"/>): none, but for the few kernels that
/// spilled a little when this test was written, bounded at what they spilled so that any growth fails.</item>
/// </list>
/// Every kernel's registers and spills are printed.
/// </summary>
public sealed class KernelAssemblyTests
{
    /// <summary>
    /// The spill stores (bytes, the largest of a file's kernels, its quantized-KV variants included) each kernel file had
    /// under NVRTC 12.4 when this test was written (session 46); 0 for the rest. Known, small, and off the training step's
    /// path: the head-size-128 attention backward of flash_attention.cu and flash_attention_hopper.cu and the latter's
    /// one-warpgroup paged prefill (one register; 5 over an fp8 KV cache); gemv.cu's two-row decode product with RoPE (4 registers at f32); moe.cu's
    /// int4 expert products (2); norm.cu's LayerNorm column sums at f16 k4 (3); sampling_cluster.cu's cluster sampler (3);
    /// paged_attention.cu's scalar decode at four query heads a KV head (9; the tensor-core decode serves Llama); and since
    /// session 47 decode_gemm.cu's int8-weight SwiGLU product at f16 and 8 row tiles (2 registers at its 168-register cap,
    /// since SiLU's sigmoid moved to the special-function unit: 160 registers and no spill before).
    /// </summary>
    private static readonly Dictionary<string, int> SpillBytesAllowed = new()
    {
        ["flash_attention.cu"] = 4, ["flash_attention_hopper.cu"] = 20, ["gemv.cu"] = 16, ["moe.cu"] = 8, ["norm.cu"] = 12,
        ["sampling_cluster.cu"] = 12, ["paged_attention.cu"] = 36, ["decode_gemm.cu"] = 8,
    };

    /// <summary>
    /// The kernels whose wgmma the assembler serializes and may: the v2x build of the second Hopper attention backward at
    /// head size 64 (C7512, too few registers: it keeps a dQ tile beside the key block's products), which serves only
    /// <see cref="Tessera.Cuda.CudaBackendOptions.HopperBackwardVariant"/> 5, 7 and 8, measured slower and never chosen by default.
    /// </summary>
    private static readonly HashSet<string> SerializationAllowed =
        ["flash_backward_hopper_v2x_bf16_d64", "flash_backward_hopper_v2x_f16_d64"];

    [Theory]
    [MemberData(nameof(KernelSourceTests.KernelFiles), MemberType = typeof(KernelSourceTests))]
    public void KernelsAssembleWithoutSerializedProductsOrSpills(string module)
    {
        NvrtcCompiler compiler;
        try
        {
            compiler = new NvrtcCompiler();
        }
        catch (CudaUnavailableException e)
        {
            Assert.Skip($"NVRTC is not installed here, so {module} cannot be assembled: {e.Message}");
            return;
        }
        int allowed = SpillBytesAllowed.GetValueOrDefault(module.Split('#')[0]);   // a variant: its file's bound
        var options = KernelLibrary.OptionsFor("sm_90", module).Append("--ptxas-options=-v").ToList();
        compiler.CompileToCubin(KernelLibrary.ComposedSource(module), module, options, out string log);
        var report = AssemblerReport.Parse(log);
        var output = TestContext.Current.TestOutputHelper;
        output?.WriteLine($"NVRTC {compiler.Version}, {string.Join(' ', options)}");
        foreach (var k in report.Kernels) output?.WriteLine(report.Describe(k));
        Assert.True(report.Kernels.Count > 0, $"the assembler reported no kernel of {module}: {log}");
        var serialized = report.Serialized.Where(k => !SerializationAllowed.Contains(k)).Select(k => $"{k} ({report.Why[k]})").ToList();
        Assert.True(serialized.Count == 0, $"wgmma serialized in {string.Join(", ", serialized)}");
        var spilled = report.Kernels.Where(k => k.SpillStoreBytes > allowed).Select(k => $"{k.Name} ({k.SpillStoreBytes} bytes)").ToList();
        Assert.True(spilled.Count == 0, $"more than {allowed} bytes of spill stores in {string.Join(", ", spilled)}");
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
            ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized due to insufficient register resources for the function 'k_c'
            """;
        var report = AssemblerReport.Parse(log);
        Assert.Equal([("k_a", 168, 0), ("k_b", 255, 84)], report.Kernels.Select(k => (k.Name, k.Registers, k.SpillStoreBytes)));
        Assert.Equal(["k_b", "k_c"], report.Serialized);
        Assert.Equal("C7515: non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline stage", report.Why["k_b"]);
        Assert.Equal("C7512: insufficient register resources", report.Why["k_c"]);
    }
}
