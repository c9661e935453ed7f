using Tessera.Bench.Gemm;
using Tessera.Bench.Training;
using Tessera.Bench.Gpu;

// Tessera's benchmarks: one subcommand per concern; each prints a table for docs/benchmarks.md.
if (args.Length == 0)
    return Usage(Console.Out, 0);
string[] rest = args[1..];
switch (args[0])
{
    case "gemm":
        return GemmBenchmark.Run(rest);
    case "train-cpu":
        return TrainingStepBench.Run(rest);
    case "gpu-train":
        return GpuTrainingBench.Run(rest);
    case "gpu-decode":
        return GpuDecodeBench.Run(rest);
    case "gpu-offload":
        return OffloadBench.Run(rest);
    case "gpu-attention":
        return GpuAttentionBench.Run(rest);
    case "gpu-gemm":
        return GpuMatMulBench.Run(rest);
    case "gpu-tp":
        return TensorParallelComputeBench.Run(rest);
    case "gpu-pp":
        return PipelineBench.Run(rest);
    case "pipeline-bubble":
        return Tessera.Bench.Training.PipelineBubbleBench.Run(rest);
    case "serve":
        return Tessera.Bench.Serving.ServeBench.Run(rest);
    case "constrained":
        return Tessera.Bench.Serving.ConstrainedBench.Run(rest);
    case "quantization":
        return Tessera.Bench.Serving.QuantizationBench.Run(rest);
    case "host-optimizer":
        return HostOptimizerBench.Run(rest);
    case "-h" or "--help" or "help":
        return Usage(Console.Out, 0);
    default:
        Console.Error.WriteLine($"tessera-bench: unknown command '{args[0]}'.");
        return Usage(Console.Error, 2);
}

static int Usage(TextWriter w, int code)
{
    w.WriteLine("usage: dotnet run --project bench/Tessera.Bench -c Release -- <command> [options]");
    w.WriteLine();
    w.WriteLine("commands:");
    w.WriteLine("  gemm   CPU SGEMM GFLOP/s on GPT-2 124M training shapes, next to OpenBLAS");
    w.WriteLine("         (options: --rows 256,1024  --threads 2  --reps 5  --no-openblas  --dgemm)");
    w.WriteLine("  train-cpu  CPU training step (forward, backward, AdamW) tokens/s for presets");
    w.WriteLine("         (arguments: PRESET:BxT ... default gpt2-tiny:16x128 gpt2-124m:4x64; --threads N --steps N)");
    w.WriteLine("  gpu-train  GPU training step of a preset in bf16: tokens/s, MFU, peak memory; --lora R[,R] for LoRA (see scripts/gpu-bench.sh)");
    w.WriteLine("  gpu-decode GPU prefill and decode tokens/s and bandwidth (see scripts/gpu-bench.sh)");
    w.WriteLine("  serve      the HTTP server under N concurrent streaming clients: tokens/s, TTFT, ITL (see bench/serve/gpu-serve-bench.sh);");
    w.WriteLine("             serve --load: 256 clients against max-batch 64 for 60 s (--device cpu --preset llama-debug on the CPU)");
    w.WriteLine("  gpu-tp     tensor parallelism on CUDA thread ranks sharing one GPU: per-rank compute against TP=1 / tp, memory per rank");
    w.WriteLine("  gpu-pp     pipeline stages of llama-8b alone on the GPU at pp 2/4/8 and the schedules predicted from them (--stages), or");
    w.WriteLine("             the loss curve of pp 2 on CUDA thread ranks beside pp 1 (--curve N)");
    w.WriteLine("  pipeline-bubble  the idle fraction of GPipe, 1F1B and interleaved 1F1B on CPU thread ranks with fixed-cost stages, against the formulas");
    w.WriteLine("  gpu-gemm       the training products, cuBLASLt against Tessera's Hopper kernel: ms, TFLOP/s");
    w.WriteLine("  gpu-attention  causal attention forward and backward, FlashAttention-2 kernels against the Hopper kernel: ms, TFLOP/s");
    w.WriteLine("  gpu-offload  one-GPU training with the AdamW state on the GPU or offloaded to the host (ZeRO-Offload)");
    w.WriteLine("         (the gpu-* commands take --cuda-options Name=value,... : the CUDA backend's options, e.g. ProfileOps=true)");
    w.WriteLine("  constrained   what checking every token against a JSON grammar costs a step, token by token and through the trie (--tokenizer DIR)");
    w.WriteLine("  quantization  what int8/fp8 weights and int8/fp8 KV caches cost a trained model: cross-entropy, greedy agreement, logit error, bytes (--model DIR --val FILE)");
    w.WriteLine("  host-optimizer  the CPU half of ZeRO-Offload: host AdamW, BF16/F32 casts, a whole offloaded update, GB/s (options: --threads N --elements N --preset NAME)");
    return code;
}
