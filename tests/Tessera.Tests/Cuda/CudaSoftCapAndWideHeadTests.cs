using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Gemma 2's soft caps and head sizes above 128 (Gemma 2 2B and 9B, Gemma 3 1B and 270M have heads of 256) on the GPU,
/// against the CPU backend in F64 on the same rounded inputs (the CPU ops are checked against direct references and finite
/// differences in Tensors/CpuSoftCapTests). Capped attention and heads of 256 take the kernels that cap and hold them: the
/// forward on tensor cores (<c>flash_forward_*</c>, mma.sync, at 64, 128 and 256; not the Hopper forward), the split decode,
/// the generic paged kernel, and the simple kernels (attention.cu) for the backward and for F32; the caps bend: inputs in
/// (-2, 2) give scores of about +-4 at D = 256 and a cap of 1. Tolerances as <see cref="CudaTestBase.Tolerance"/>: f32 1e-5, 16-bit 1e-2 relative in norm; the
/// 16-bit backward 2e-2 (P and dS rounded before the products, as the other 16-bit kernels).
/// The kernels are also checked on the CPU emulation (KernelEmulationTests.SimpleAttentionKernelsGiveTheReferenceResultsOnTheCpuEmulation).
/// </summary>
[Collection("cuda")]
public sealed class CudaSoftCapAndWideHeadTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    private Tensor Cpu(double[] values, params int[] dims) => TestTensors.FromDoubles(_cpu, values, DType.F64, dims);

    [Theory]
    [InlineData(DType.F32, 3.0)]
    [InlineData(DType.BF16, 30.0)]
    [InlineData(DType.F16, 0.5)]
    public void SoftCapAndItsBackwardMatchTheCpu(DType dtype, double cap)
    {
        int n = 4099;                                                    // 16-byte vectors, then a tail of 3 or 1
        var (x, xv) = Random(dtype, 3 * cap, n);                         // up to 3 caps: tanh's flat part too
        Gpu.SoftCap(x, cap);
        var cx = Cpu(xv, n);
        _cpu.SoftCap(cx, cap);
        var y = Download(x);
        AssertClose(_cpu.ToArray<double>(cx), y, Tolerance(dtype), $"SoftCap {dtype} cap {cap}");
        Assert.All(y, v => Assert.True(Math.Abs(v) <= cap, $"capped value {v} beyond the cap {cap}"));

        var (dy, dyv) = Random(dtype, 1, n);
        Gpu.SoftCapBackward(x, dy, cap);
        var cdy = Cpu(dyv, n);
        _cpu.SoftCapBackward(Cpu(Stored(y, dtype), n), cdy, cap);        // the CPU from the GPU's capped values, as training feeds them
        AssertClose(_cpu.ToArray<double>(cdy), Download(dy), Tolerance(dtype), $"SoftCapBackward {dtype} cap {cap}");
    }

    [Fact]
    public void SoftCapRefusesACapThatIsNotPositiveAndFinite()
    {
        var x = Gpu.Allocate(new Shape(8), DType.F32);
        Assert.Contains("positive and finite", Assert.Throws<ArgumentOutOfRangeException>(() => Gpu.SoftCap(x, 0)).Message);
        Assert.Contains("positive and finite", Assert.Throws<ArgumentOutOfRangeException>(() => Gpu.SoftCapBackward(x, x, double.PositiveInfinity)).Message);
        var q = Gpu.Allocate(new Shape(1, 4, 2, 64), DType.BF16);
        var lse = Gpu.Allocate(new Shape(1, 2, 4), DType.F32);
        Assert.Contains("soft cap", Assert.Throws<ArgumentOutOfRangeException>(() => Gpu.AttentionForward(q, q, q, q, lse, 0.125, 0, -1)).Message);
    }

    /// <summary>
    /// Training attention, forward and backward: capped at head sizes 256 (Gemma 2 2B), 128 (Gemma 2 27B: without the cap the
    /// tensor-core kernels would take it) and 40 with a window; uncapped at 256 (Gemma 3) and 256 with a window.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 256, 70, 0, 1.0)]
    [InlineData(DType.BF16, 128, 130, 0, 1.0)]
    [InlineData(DType.F32, 40, 50, 7, 1.0)]
    [InlineData(DType.BF16, 256, 70, 0, 0.0)]
    [InlineData(DType.F16, 256, 90, 33, 0.0)]
    public void CappedOrWideHeadAttentionForwardAndBackwardMatchTheCpu(DType dtype, int d, int t, int window, double cap)
    {
        int b = 2, h = 4, kh = 2;
        double scale = 1 / Math.Sqrt(d);
        var (q, qv) = Random(dtype, 2, b, t, h, d);
        var (k, kv) = Random(dtype, 2, b, t, kh, d);
        var (v, vv) = Random(dtype, 1, b, t, kh, d);
        var (dO, dOv) = Random(dtype, 1, b, t, h, d);
        var o = Poisoned(dtype, b, t, h, d);
        var lse = Gpu.Allocate(new Shape(b, h, t), DType.F32);
        Gpu.AttentionForward(q, k, v, o, lse, scale, window, cap);
        string what = $"{dtype} D={d} T={t} window {window} cap {cap}";

        var co = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        var cl = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        _cpu.AttentionForward(Cpu(qv, b, t, h, d), Cpu(kv, b, t, kh, d), Cpu(vv, b, t, kh, d), co, cl, scale, window, cap);
        AssertClose(_cpu.ToArray<double>(co), Download(o), Tolerance(dtype), $"output {what}");
        AssertClose(_cpu.ToArray<double>(cl), Download(lse), 1e-4, $"log-sum-exp {what}");

        var dq = Poisoned(dtype, b, t, h, d);
        var dk = Poisoned(dtype, b, t, kh, d);
        var dv = Poisoned(dtype, b, t, kh, d);
        Gpu.AttentionBackward(q, k, v, o, dO, lse, dq, dk, dv, scale, window, softCap: cap);
        var cdq = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        var cdk = _cpu.Allocate(new Shape(b, t, kh, d), DType.F64);
        var cdv = _cpu.Allocate(new Shape(b, t, kh, d), DType.F64);
        _cpu.AttentionBackward(Cpu(qv, b, t, h, d), Cpu(kv, b, t, kh, d), Cpu(vv, b, t, kh, d), co, Cpu(dOv, b, t, h, d), cl, cdq, cdk, cdv,
            scale, window, softCap: cap);
        double tol = dtype == DType.F32 ? 1e-5 : 2e-2;
        AssertClose(_cpu.ToArray<double>(cdq), Download(dq), tol, $"dq {what}");
        AssertClose(_cpu.ToArray<double>(cdk), Download(dk), tol, $"dk {what}");
        AssertClose(_cpu.ToArray<double>(cdv), Download(dv), tol, $"dv {what}");
    }

    /// <summary>
    /// The tensor-core forward at heads of 256 (<c>flash_forward_bf16_d256</c>: key tiles of 32, 96 KB of shared memory) must
    /// keep two CTAs an SM, the premise of its tile sizes (one would leave four warps to hide every latency), and spill nothing
    /// (252 registers and no local memory on an H100 in session 40); its resources are printed beside the head-size-128 kernel's.
    /// </summary>
    [Fact]
    public void TheWideHeadForwardKeepsTwoCtasAnSm()
    {
        var module = Gpu.Kernels.Module("flash_attention.cu");
        foreach (var (d, keys) in new[] { (128, 64), (256, 32) })
        {
            int shared = (64 + 4 * keys) * d * 2;
            var r = module.Resources($"flash_forward_bf16_d{d}", 128, shared);
            Console.WriteLine($"[wide-head forward] flash_forward_bf16_d{d}: {r.Registers} registers, {r.LocalBytes} bytes local, {shared} bytes shared, {r.CtasPerSm} CTAs per SM");
            if (d != 256) continue;
            Assert.True(r.CtasPerSm >= 2, $"flash_forward_bf16_d256 fits {r.CtasPerSm} CTA(s) an SM at {shared} bytes of shared memory");
            Assert.True(r.LocalBytes == 0, $"flash_forward_bf16_d256 spills: {r.LocalBytes} bytes of local memory at {r.Registers} registers");
        }
    }

    /// <summary>
    /// Decoding and prefill over a KV cache at device-side positions, capped and with wide heads: up to 16 new queries over at
    /// least 256 cached positions take the split decode (<c>flash_decode_*</c>, CUDA cores, at 64, 128 and 256), more queries
    /// the tensor-core forward (16-bit) or the simple kernel.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 256, 1, 600, 0, 1.0)]
    [InlineData(DType.BF16, 256, 3, 300, 64, 1.0)]
    [InlineData(DType.BF16, 128, 1, 3000, 0, 1.0)]   // past the grouped decode's 2048 keys: the grouped kernel does not cap
    [InlineData(DType.BF16, 256, 2, 400, 0, 0.0)]
    [InlineData(DType.F16, 256, 20, 200, 0, 1.0)]    // a prefill chunk: the tensor-core forward at device positions
    public void CappedOrWideHeadCachedAttentionMatchesTheCpu(DType dtype, int d, int t, int capacity, int window, double cap)
    {
        int b = 2, h = 8, kh = 2;
        int[] starts = [capacity / 3, capacity - t];
        double scale = 1 / Math.Sqrt(d);
        var (q, qv) = Random(dtype, 2, b, t, h, d);
        var (kc, kcv) = Random(dtype, 2, b, capacity, kh, d);
        var (vc, vcv) = Random(dtype, 1, b, capacity, kh, d);
        var o = Poisoned(dtype, b, t, h, d);
        Gpu.AttentionForwardCached(q, kc, vc, UploadInts(starts, 2), o, scale, window, cap);
        var co = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        _cpu.AttentionForwardCached(Cpu(qv, b, t, h, d), Cpu(kcv, b, capacity, kh, d), Cpu(vcv, b, capacity, kh, d), _cpu.FromArray(starts, 2), co,
            scale, window, cap);
        AssertClose(_cpu.ToArray<double>(co), Download(o), Tolerance(dtype), $"cached attention {dtype} D={d} T={t} S={capacity} window {window} cap {cap}");
    }

    /// <summary>
    /// Greedy generation of Gemma models on the GPU (F32) picks the CPU reference's tokens, with the decode step recorded into a
    /// graph and without: gemma2-debug as it is (caps 5 and 3, heads of 16), and gemma2-debug and gemma3-debug with heads of 256
    /// (query_pre_attn_scalar 256, as Gemma 2 2B's).
    /// </summary>
    [Theory]
    [InlineData("gemma2-debug", 0)]
    [InlineData("gemma2-debug", 256)]
    [InlineData("gemma3-debug", 256)]
    public void GreedyGenerationOfGemmaModelsMatchesTheCpu(string preset, int headSize)
    {
        var config = PresetWithHeadSize(preset, headSize);
        var onCpu = new Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(9));
        var onGpu = new Transformer(config, Gpu, DType.F32);
        Gpu.CopyFromHost<float>(_cpu.ToArray<float>(onCpu.Parameters.Values), onGpu.Parameters.Values);
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        int count = config.MaxSequenceLength - prompt.Length - 1;
        var expected = TextGeneratorTests.Reference(onCpu, _cpu, prompt, count, SamplingOptions.Greedy);
        var generator = new TextGenerator(onGpu);
        Assert.Equal(expected, generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList());
        Assert.True(generator.LastRunRecorded, "the decode step should replay a CUDA graph");
        Assert.Equal(expected, generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count, CaptureGraph = false }).ToList());
    }

    /// <summary>A Gemma preset, with heads of <paramref name="headSize"/> (and scores scaled by 1/sqrt of it) unless 0.</summary>
    internal static TransformerConfig PresetWithHeadSize(string preset, int headSize)
    {
        var config = ModelPresets.Get(preset);
        return headSize == 0 ? config : config with
        {
            ExplicitHeadSize = headSize, QueryPreAttentionScalar = config.QueryPreAttentionScalar > 0 ? headSize : config.QueryPreAttentionScalar,
        };
    }
}
