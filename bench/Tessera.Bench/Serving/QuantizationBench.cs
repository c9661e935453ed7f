using System.Globalization;
using Tessera.Cuda;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Models;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;

namespace Tessera.Bench.Serving;

/// <summary>
/// What int8, FP8 and int4 weights cost a trained model: the same model loaded in floating point, with <see cref="WeightQuantization.Int8"/>,
/// with <see cref="WeightQuantization.Fp8"/> (its activations quantized per row too) and with <see cref="WeightQuantization.Int4"/>
/// (round to nearest, groups of 128; the embeddings and the head left in the dtype), each run over the windows of a
/// validation shard; a table of the mean cross-entropy (nats a token), how often each quantized model agrees with the float
/// one on the most likely next token, the largest logit difference against the logits' spread, and the weights' bytes. Then
/// the float model's paged KV cache (<see cref="KvCacheRows"/>): in the model's dtype, in int8 and in FP8 (E4M3), what
/// serving's <c>--kv-dtype model|int8|fp8</c> holds, with the bytes a (position, head) row takes.
/// <para>Usage: quantization --model DIR --val FILE [--windows 64] [--device cpu|cuda] [--dtype f32|bf16]</para>
/// <para>quantization --ops [--device cpu|cuda] [--dtype f32|bf16]: the product alone, x (M, K) times a (N, K) weight in the dtype
/// against the same weight as int8 (<see cref="IBackend.QuantizedMatMul"/>), median microseconds of 50 after at least 300 ms of warm-up, at
/// decoding's and prefill's row counts.</para>
/// </summary>
public static class QuantizationBench
{
    public static int Run(string[] args)
    {
        string? modelDir = null, valPath = null;
        string device = "cpu", dtypeName = "f32";
        int windows = 64;
        bool ops = false;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => args[++i];
            switch (args[i])
            {
                case "--model": modelDir = Next(); break;
                case "--val": valPath = Next(); break;
                case "--windows": windows = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--device": device = Next(); break;
                case "--dtype": dtypeName = Next(); break;
                case "--ops": ops = true; break;
                default: throw new ArgumentException($"quantization: unknown argument '{args[i]}'");
            }
        }
        var dtype = dtypeName switch { "bf16" => DType.BF16, "f32" => DType.F32, _ => throw new ArgumentException($"--dtype {dtypeName}: expected bf16 or f32") };
        IBackend backend = device.StartsWith("cuda", StringComparison.Ordinal) ? new CudaBackend(0) : new CpuBackend(Environment.ProcessorCount);
        if (ops) return Ops(backend, dtype);
        if (modelDir is null || valPath is null) throw new ArgumentException("quantization: --model DIR and --val FILE are required");
        var plain = TrainedModel.Load(modelDir, backend, dtype).Model;
        (string Name, Transformer Model)[] quantized =
        [
            ("int8", TrainedModel.Load(modelDir, backend, dtype, quantization: WeightQuantization.Int8).Model),
            ("fp8", TrainedModel.Load(modelDir, backend, dtype, quantization: WeightQuantization.Fp8).Model),
            ("int4", TrainedModel.Load(modelDir, backend, dtype, quantization: WeightQuantization.Int4).Model),
        ];
        int t = plain.Config.MaxSequenceLength, v = plain.Config.VocabSize;
        var tokens = TokenShard.ReadTokens(valPath).ToArray();
        int count = Math.Min(windows, (tokens.Length - 1) / t);
        if (count < 1) throw new ArgumentException($"quantization: {valPath} holds {tokens.Length} tokens, fewer than one window of {t + 1}");
        double lossPlain = 0, spread = 0;
        var loss = new double[quantized.Length];
        var maxDiff = new double[quantized.Length];
        var agree = new long[quantized.Length];
        long positions = 0;
        for (int w = 0; w < count; w++)
        {
            int start = w * ((tokens.Length - 1 - t) / Math.Max(1, count - 1));
            var ids = new int[t];
            for (int i = 0; i < t; i++) ids[i] = tokens[start + i];
            var input = backend.FromArray(ids, 1, t);
            var a = Logits(plain, input, v);
            for (int i = 0; i < t; i++)
            {
                lossPlain += CrossEntropy(a, i * v, v, tokens[start + i + 1]);
                for (int j = 0; j < v; j++) spread = Math.Max(spread, Math.Abs(a[i * v + j]));
            }
            positions += t;
            for (int q = 0; q < quantized.Length; q++)
            {
                var b = Logits(quantized[q].Model, input, v);
                for (int i = 0; i < t; i++)
                {
                    loss[q] += CrossEntropy(b, i * v, v, tokens[start + i + 1]);
                    if (ArgMax(a, i * v, v) == ArgMax(b, i * v, v)) agree[q]++;
                    for (int j = 0; j < v; j++) maxDiff[q] = Math.Max(maxDiff[q], Math.Abs(a[i * v + j] - b[i * v + j]));
                }
            }
        }
        Console.WriteLine($"quantization: {modelDir} ({plain.Config.Family}, {plain.Config.Layers} layers) on {backend.Device}, {count} windows of {t} tokens of {valPath}");
        Console.WriteLine();
        Console.WriteLine("| weights | weight MiB | mean cross-entropy (nats/token) | greedy next token as F32's | largest logit difference (of the largest logit) |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {dtype} | {plain.WeightBytes / 1048576.0:F2} | {lossPlain / positions:F4} | | |"));
        for (int q = 0; q < quantized.Length; q++)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {quantized[q].Name} + {dtype} | {quantized[q].Model.WeightBytes / 1048576.0:F2} | {loss[q] / positions:F4} | {100.0 * agree[q] / positions:F2} % | {maxDiff[q]:F4} ({maxDiff[q] / spread:P2}) |"));
        KvCacheRows(plain, tokens, count, t, spread);
        return 0;
    }

    /// <summary>
    /// The same windows through serving's paged path (<see cref="PagedModelRunner"/> over a <see cref="PagedKvCache"/>), once
    /// with the cache in the model's dtype and once each in I8 and F8E4M3: each window is one prefill step whose every row is
    /// sampled (its rows after the first scheduled as verified drafts, speculative decoding's form), so each position's logits
    /// are computed after its own keys and values were appended, and read back from, the pool (quantized, for I8 and
    /// F8E4M3): the teacher-forced loss of serving with that cache. Agreement and logit differences are against the dense
    /// forward's (<paramref name="spread"/> its largest logit); the float cache's row shows the paged path's own rounding.
    /// </summary>
    private static void KvCacheRows(Transformer model, ushort[] tokens, int count, int t, double spread)
    {
        var config = model.Config;
        int v = config.VocabSize, d = config.HeadSize;
        DType?[] caches = [null, DType.I8, DType.F8E4M3];
        var loss = new double[caches.Length];
        var maxDiff = new double[caches.Length];
        var agree = new long[caches.Length];
        long positions = 0;
        var dense = new List<float[]>();
        for (int w = 0; w < count; w++)
        {
            int start = w * ((tokens.Length - 1 - t) / Math.Max(1, count - 1));
            dense.Add(Logits(model, model.Backend.FromArray(Window(tokens, start, t), 1, t), v));
            positions += t;
        }
        for (int c = 0; c < caches.Length; c++)
        {
            var options = new PagedKvCacheOptions
            {
                BlockSize = 16, DType = caches[c], PrefixCaching = false,   // every window computed whole
                MemoryBytes = PagedKvCache.BlockBytes(caches[c] ?? model.DType, config.Layers, model.CachedKvHeads, d, 16) * ((t + 15) / 16),
            };
            using var cache = new PagedKvCache(model.Backend, model.DType, config.Layers, model.CachedKvHeads, d, options);
            var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 1, TokenBudget = t, DecodingStepTokens = t });
            using var runner = new PagedModelRunner(model, cache, maxRows: t, maxSequences: 1, maxSequenceLength: t, recordGraphs: false, maxDrafts: t - 1);
            for (int w = 0; w < count; w++)
            {
                int start = w * ((tokens.Length - 1 - t) / Math.Max(1, count - 1));
                var sequence = new Sequence(w, Window(tokens, start, t), t);
                scheduler.Add(sequence);
                var step = scheduler.Schedule();
                if (step.Sequences.Count != 1 || step.Sequences[0].Count != t)
                    throw new InvalidOperationException($"quantization: window {w} was not scheduled as one prefill of {t} tokens");
                step.Sequences[0] = step.Sequences[0] with { Drafts = t - 1 };   // every row sampled
                int rows = runner.Run(step, withLogits: true, out _, out var logits);
                if (rows != t) throw new InvalidOperationException($"quantization: the runner sampled {rows} rows of {t}");
                var a = dense[w];
                for (int i = 0; i < t; i++)
                {
                    var b = logits.Slice(i * v, v);
                    loss[c] += CrossEntropy(b.ToArray(), 0, v, tokens[start + i + 1]);
                    if (ArgMax(a, i * v, v) == ArgMax(b.ToArray(), 0, v)) agree[c]++;
                    for (int j = 0; j < v; j++) maxDiff[c] = Math.Max(maxDiff[c], Math.Abs(a[i * v + j] - b[j]));
                }
                scheduler.Finish(sequence);
            }
        }
        Console.WriteLine();
        Console.WriteLine($"| KV cache (paged, {model.DType} weights) | bytes a (position, head) row (D = {d}) | mean cross-entropy (nats/token) | greedy next token as the dense pass's | largest logit difference (of the largest logit) |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        for (int c = 0; c < caches.Length; c++)
        {
            var pool = caches[c] ?? model.DType;
            string name = caches[c] switch { DType.I8 => "int8, a scale per position and head", DType.F8E4M3 => "fp8 (e4m3), a scale per position and head", _ => $"{pool}" };
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name} | {PagedKvPool.RowBytes(pool, d)} | {loss[c] / positions:F4} | {100.0 * agree[c] / positions:F2} % | {maxDiff[c]:F4} ({maxDiff[c] / spread:P2}) |"));
        }
    }

    private static int[] Window(ushort[] tokens, int start, int t) => Array.ConvertAll(tokens[start..(start + t)], x => (int)x);

    private static int Ops(IBackend backend, DType dtype)
    {
        Console.WriteLine($"quantization --ops: x (M, K) W^T on {backend.Device}, {dtype} weights against int8 ones; median us of 50");
        Console.WriteLine();
        Console.WriteLine("| K | N | M | weights in dtype, us | int8, us | int8 speed-up |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|");
        var rng = new Random(1);
        foreach (var (k, n) in new[] { (768, 3072), (3072, 768), (2048, 8192), (256, 1024) })
        {
            var host = new float[(long)k * n];
            for (int i = 0; i < host.Length; i++) host[i] = (float)(rng.NextDouble() - 0.5);
            var w = backend.Allocate(new Shape(n, k), dtype);
            backend.Copy(backend.FromArray(host, n, k), w);
            var weight = Int8Quantization.Quantize(backend, host, n, k);
            foreach (int m in new[] { 1, 2, 4, 8, 16, 64 })
            {
                var x = backend.Allocate(new Shape(m, k), dtype);
                backend.Fill(x, 0.5);
                var y = backend.Allocate(new Shape(m, n), dtype);
                double plain = Median(backend, () => backend.MatMul(x, w, y, transposeB: true));
                double int8 = Median(backend, () => backend.QuantizedMatMul(x, weight, y));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {k} | {n} | {m} | {plain:F1} | {int8:F1} | {plain / int8:F2}x |"));
            }
        }
        return 0;
    }

    private static double Median(IBackend backend, Action op)
    {
        // Warm-up: 20 calls and at least 300 ms, so that the JIT's tiered compilation has replaced the first code of the kernels.
        var warm = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < 20 || warm.ElapsedMilliseconds < 300; i++) op();
        backend.Synchronize();
        var times = new double[50];
        for (int i = 0; i < times.Length; i++)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            op();
            backend.Synchronize();
            times[i] = clock.Elapsed.TotalMicroseconds;
        }
        Array.Sort(times);
        return times[times.Length / 2];
    }

    private static float[] Logits(Transformer model, Tensor input, int vocab)
    {
        var logits = model.Forward(input, 0);                                // (1, T, Vpad)
        var host = model.Backend.ToArray<float>(model.Backend.Contiguous(logits.Slice(2, 0, vocab)));
        model.ReleaseActivations(0);
        return host;
    }

    private static double CrossEntropy(float[] logits, int offset, int v, int target)
    {
        double max = double.NegativeInfinity, sum = 0;
        for (int j = 0; j < v; j++) max = Math.Max(max, logits[offset + j]);
        for (int j = 0; j < v; j++) sum += Math.Exp(logits[offset + j] - max);
        return Math.Log(sum) + max - logits[offset + target];
    }

    private static int ArgMax(float[] logits, int offset, int v)
    {
        int best = 0;
        for (int j = 1; j < v; j++) if (logits[offset + j] > logits[offset + best]) best = j;
        return best;
    }
}
