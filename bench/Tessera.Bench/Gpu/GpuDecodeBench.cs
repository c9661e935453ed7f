using System.Globalization;
using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Inference.Benchmarks;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Generation on one GPU through <see cref="TextGenerator"/> (KV cache, greedy sampling on the host): a random prompt
/// is prefilled, then tokens are decoded one at a time. Prefill tokens/s = prompt length / time to the first token;
/// decode tokens/s = (new tokens - 1) / time from the first to the last token. Achieved bandwidth counts, per decoded
/// token, every weight once (the tied head reads the whole embedding) plus the keys and values of every cached
/// position, over the decode time, as a share of what a 1 GiB device-to-device copy reaches on the same GPU in the same
/// process (read + write bytes over time), and of 3.0 TB/s (the H100 figure the issue names).
/// <para>Usage: gpu-decode [--preset llama-1b] [--dtype bf16|f32] [--prompt 512] [--new 256] [--repeat 2] [--no-graph] [--no-header]
/// [--cuda-options SETTINGS] [--resources]</para>
/// <para>SETTINGS are <see cref="CudaBackendOptions.Parse"/>'s form: <c>MatrixVectorKernels=false</c> sends the decode products to
/// cuBLASLt instead of the matrix-vector kernels; <c>ProfileOps=true</c> (which turns graphs off) adds the per-op GPU time per
/// token over all rounds. The settings that differ from the defaults are named in the table's "decode step" column.
/// --resources adds the registers, spills and CTAs per SM of a one-row bf16 step's kernels: whether the next
/// kernel's CTAs fit beside a running one's decides what programmatic dependent launch can overlap.</para>
/// </summary>
public static class GpuDecodeBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string preset = "llama-1b", dtypeName = "bf16";
        int promptLength = 512, newTokens = 256, repeat = 2;
        bool graph = true, header = true, resources = false;
        var quantization = Tessera.Nn.Quantization.WeightQuantization.None;
        var cudaOptions = CudaBackendOptions.Default;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--dtype": dtypeName = args[++i]; break;
                case "--prompt": promptLength = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--new": newTokens = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--repeat": repeat = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-graph": graph = false; break;
                case "--no-header": header = false; break;
                case "--resources": resources = true; break;
                case "--cuda-options": cudaOptions = CudaBackendOptions.Parse(args[++i]); break;
                case "--quantize": quantization = args[++i] switch { "int8" => Tessera.Nn.Quantization.WeightQuantization.Int8, "fp8" => Tessera.Nn.Quantization.WeightQuantization.Fp8, "int4" => Tessera.Nn.Quantization.WeightQuantization.Int4, "none" => Tessera.Nn.Quantization.WeightQuantization.None, var q => throw new ArgumentException($"--quantize {q}: expected int8, fp8, int4 or none") }; break;
                default: throw new ArgumentException($"gpu-decode: unknown argument '{args[i]}'");
            }
        }
        var dtype = dtypeName switch { "bf16" => DType.BF16, "f32" => DType.F32, _ => throw new ArgumentException($"--dtype {dtypeName}: expected bf16 or f32") };
        using var backend = new CudaBackend(0, cudaOptions);
        var config = ModelPresets.Get(preset);
        // --quantize int8|fp8: every weight matrix a byte a weight (the tied head reads the quantized token table); int4: every
        // linear layer's weight in 4-bit groups of 128, the token table and the head kept in the model's dtype.
        var model = quantization != Tessera.Nn.Quantization.WeightQuantization.None ? PretrainedModel.Quantized(config, backend, dtype, quantization: quantization) : new Transformer(config, backend, dtype);
        model.ValidateInputs = false;
        BenchmarkWeights.Initialize(model, seed: 2);
        var options = new GenerationBenchmarkOptions
        {
            PromptLength = promptLength, NewTokens = newTokens, Rounds = repeat,
            Generation = new GenerationOptions { CaptureGraph = graph },
        };
        var result = new GenerationBenchmark(model, options, () => backend.Allocator.Statistics.PeakBytesInUse).Run();
        int decoded = result.DecodedTokens;
        double prefillMs = result.PrefillMilliseconds, decodeMs = result.DecodeMilliseconds, seconds = decodeMs / 1000;
        double bandwidth = result.BandwidthBytesPerSecond;
        double copyBandwidth = DeviceCopyBandwidth(backend);
        string settings = cudaOptions.Format();
        string path = (result.DecodeStepReplayed ? "graph" : "eager") + (cudaOptions.MatrixVectorKernels ? ", gemv" : ", cuBLASLt")
            + (settings.Length > 0 ? $" ({settings})" : "");
        if (header)
        {
            Console.WriteLine("| system | model | dtype | decode step | prompt | new | prefill ms | prefill tokens/s | decode ms/token | decode tokens/s | GB/s | share of measured copy | share of 3.0 TB/s | peak GiB |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| Tessera | {preset} | {(quantization != Tessera.Nn.Quantization.WeightQuantization.None ? $"{quantization.ToString().ToLowerInvariant()} + {dtype}" : $"{dtype}")} | {path} | {promptLength} | {newTokens} | {prefillMs:F1} | {promptLength / (prefillMs / 1000):F0} | {decodeMs / decoded:F3} | {decoded / seconds:F1} | {bandwidth / 1e9:F0} | {bandwidth / copyBandwidth:P1} of {copyBandwidth / 1e12:F2} TB/s | {bandwidth / 3.0e12:P1} | {result.PeakDeviceBytes / (double)(1L << 30):F1} |"));
        // Per token over every round, the warm-up included (the profiler is never reset).
        if (backend.Profiler is { } profiler) Console.WriteLine(profiler.Table(options.Rounds * (decoded + 1)));
        if (resources) WriteResources(backend, config, dtype, quantization, Math.Min(config.MaxSequenceLength, promptLength + newTokens));
        return 0;
    }

    /// <summary>
    /// Registers, local bytes (spills), shared bytes and CTAs per SM of a one-row bf16 decode step's kernels, named as the
    /// backend picks them: the matrix-vector products' three epilogues (x of the block's width staged in shared memory) and
    /// the decode attention over the cache <c>generate</c> makes (the model's longest sequence) at the run's last length,
    /// the kernel <see cref="CudaBackend.FlashDecodeKernel"/> names for the bound a decode step promises there
    /// (<see cref="CudaBackend.CacheBound"/>). CTAs per
    /// SM as launched (<see cref="Tessera.Cuda.Compilation.CudaModule.ResidentCtas"/>). Other runs (quantized weights, the
    /// products on cuBLASLt, f32) get a line saying it covers only this one.
    /// </summary>
    private static void WriteResources(CudaBackend backend, TransformerConfig config, DType dtype,
        Tessera.Nn.Quantization.WeightQuantization quantization, int lastLength)
    {
        Console.WriteLine();
        if (dtype != DType.BF16 || quantization != Tessera.Nn.Quantization.WeightQuantization.None || !backend.Options.MatrixVectorKernels)
        {
            Console.WriteLine("--resources covers the bf16 step on the matrix-vector kernels only; this run's products are other kernels");
            return;
        }
        Console.WriteLine("| kernel (one-row step) | threads | registers | local bytes | shared bytes | CTAs per SM |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        void Row(string file, string kernel, int threads, int dynamicShared)
        {
            var module = backend.Kernels.Module(file);
            int ctas = module.ResidentCtas(kernel, threads, dynamicShared);   // before Resources, which sets the carveout
            var r = module.Resources(kernel, threads, dynamicShared);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {kernel} | {threads} | {r.Registers} | {r.LocalBytes} | {r.StaticSharedBytes + dynamicShared} | {ctas} |"));
        }
        foreach (var epilogue in new[] { "", "_swiglu", "_rope" })
            Row("gemv.cu", $"gemv_stream{epilogue}_bf16_m1", 256, config.Embedding * 2);
        // The query rows a kv head serves at T = 1, against the cache generate makes (the model's longest sequence) as long
        // as a decode step promises it at the run's last length.
        int promised = backend.CacheBound(lastLength, config.MaxSequenceLength);
        Row("flash_attention.cu", backend.FlashDecodeKernel(DType.BF16, config.HeadSize, config.Heads / config.EffectiveKvHeads, promised, config.AttentionSoftCap), 128, 0);
    }

    /// <summary>Bytes read plus written per second by a 1 GiB device-to-device copy: the bandwidth a streaming kernel can hope for.</summary>
    internal static double DeviceCopyBandwidth(CudaBackend backend)
    {
        const int elements = 1 << 28;   // 1 GiB of F32
        var a = backend.Allocate(new Shape(elements), DType.F32);
        var b = backend.Allocate(new Shape(elements), DType.F32);
        backend.Fill(a, 1);
        using var start = new Tessera.Cuda.Runtime.CudaEvent(backend.CudaDevice);
        using var end = new Tessera.Cuda.Runtime.CudaEvent(backend.CudaDevice);
        var times = new List<double>();
        for (int i = 0; i < 8; i++)
        {
            start.Record(backend.Stream);
            backend.Copy(a, b);
            end.Record(backend.Stream);
            end.Synchronize();
            if (i >= 2) times.Add(end.ElapsedSince(start));
        }
        times.Sort();
        a.Storage.Dispose();
        b.Storage.Dispose();
        return 2.0 * elements * sizeof(float) / (times[times.Count / 2] / 1000);
    }
}
