using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Tessera.Cuda;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Models.Chat;
using Tessera.Server;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Benchmarks;
using Tessera.Models.Tokenization;
using Tessera.Training.Data;
using Tessera.Training.Checkpoints;

namespace Tessera.Bench.Serving;

/// <summary>
/// The HTTP server under load, end to end: a model with random weights (speed does not depend on them) behind
/// <see cref="OpenAiServer"/> on a loopback port, driven by N concurrent streaming clients (HttpClient, SSE) through
/// POST /v1/completions with token-id prompts (greedy, no end token: every request runs to max_tokens). Per concurrency
/// level: generated tokens/s over the wall time of the level, time to first token and inter-token latency (p50, p99, as
/// the clients see them), engine steps, and on a GPU the share of the memory roofline: per decode step the weights once
/// plus the keys and values of every cached position of the batch, over the step time, against a device copy measured
/// in the same process; and a table of the level's floors (<see cref="ServingFloor"/>: the least time any server could take
/// for the same prompts and tokens, prefill and decode in turn and perfectly overlapped) beside the measured rate.
/// <para>Usage: serve [--device cuda|cpu] [--preset llama-1b] [--dtype bf16|f32 (bf16 on cuda, f32 on cpu)] [--prompt 512] [--new 128]
/// [--concurrency 1,8,32,64,128] [--rounds 2] [--max-batch 128] [--kv-memory GiB] [--token-budget 8192]
/// [--decoding-step-tokens 512] [--no-graphs] [--phase-sync] [--device-time] [--no-async] [--advance-on-device] [--draft-tokens N]
/// [--uniform-drafts] [--draft-preset P | --draft-model DIR] [--model DIR] [--quantize int8|fp8] [--kv-dtype model|int8|fp8]
/// [--temperature T] [--top-p P] [--logprobs N] [--frequency-penalty F] [--host-sampling] [--cuda-options Name=value,...]</para>
/// <para>--temperature T (default 0: greedy) and --top-p P make every request sample, as an OpenAI client's default
/// (temperature 1) does; the tokens are drawn on the device (<see cref="EngineOptions.SampleOnDevice"/>) unless
/// --host-sampling, where each sampled row's logits go to the host and the host sampler draws. --logprobs N asks every
/// request for its tokens' log-probabilities and N alternatives, --frequency-penalty F for OpenAI's frequency penalty: both
/// computed on the device unless --host-sampling.</para>
/// <para>--quantize int8 serves the model with its linear layers' weights as int8 with row scales (a byte a weight); fp8 as
/// E4M3 codes with row scales, each product quantizing its input's rows to E4M3 too (W8A8-FP8).</para>
/// <para>--kv-dtype int8 (fp8) holds the paged KV cache as int8 values (E4M3 codes) with one F32 scale per position and head
/// (<see cref="PagedKvCacheOptions.DType"/>): more positions in --kv-memory, and fewer bytes read per decode step (the roofline
/// counts the bytes and scales).</para>
/// <para>--draft-preset P guesses with a draft model of preset P and the bench's random weights (seed 2, as the served
/// model's: the served preset itself gives a draft that is always right but costs what the served model costs, so it
/// measures the mechanism, not a speed-up; another preset is almost always wrong); --draft-model DIR loads a trained
/// draft model.
/// --draft-tokens defaults to 4 with either.</para>
/// <para>--model DIR serves a trained model (a run directory, a checkpoint or a Hugging Face directory, as `tessera serve
/// --model` takes) instead of the preset's random weights, with its tokenizer; its prompts are then windows of the embedded
/// corpus (the README's training text), so a trained model's outputs and what they repeat are a real model's.</para>
/// <para>--draft-tokens N turns on speculative decoding by prompt lookup (<see cref="EngineOptions.Speculation"/>); a line per
/// level then gives the draft tokens verified and accepted; --uniform-drafts pads every decoding sequence's guesses to N so that
/// steps of decodes are recorded per bucket (<see cref="SpeculationOptions.UniformDrafts"/>). The model's weights are random, so what its greedy output
/// repeats (and so the acceptance) is not a real model's: read the rate with the acceptance beside it.</para>
/// <para>--device-time times every step on the device's clock too (<see cref="EngineOptions.MeasureDeviceTime"/>, two events a
/// step): the phase table gains the steps' device time and the device's idle time before each step (waiting for the host).</para>
/// <para>--advance-on-device turns on <see cref="EngineOptions.AdvanceDecodeOnDevice"/> (decode steps that read the previous step's
/// tokens in order advance their metadata on the device and skip the host-to-device copy); the count of skipped copies is printed.</para>
/// <para>--no-async waits for every step's tokens before the next step is scheduled (<see cref="EngineOptions.AsyncScheduling"/> off).
/// With the phase waits on (--phase-sync), a step cannot overlap the next one's host work either way.</para>
/// <para>After the main table, a second one per level says where the engine's steps spent their time (schedule, metadata
/// write and H2D copy, forward, D2H readback, host emit), decode-only and mixed steps apart. By default the engine runs as the
/// server does (<see cref="EngineOptions.SeparateStepPhases"/> off): a step's host work overlaps the device, so the forward's
/// device time shows partly in the readback. --phase-sync makes the engine wait for the device between a step's phases so the
/// forward's device time is its own, at the cost of that overlap: on the H200 (session 15) the 64-stream level gave 21,487
/// generated tokens/s with the waits and 25,362 without, so a level's tokens/s is only the server's without them.</para>
/// <para>--cuda-options ProfileOps=true adds, per level, the GPU time of every op the engine enqueued (products named by their
/// shape, so a slow row count shows as its own row; no graph is recorded under the profiler, so the step times are not the
/// server's) and the log of the cuBLASLt algorithms timed on first use.</para>
/// <para>serve --load [--clients 256] [--max-batch 64] [--seconds 60]: the issue's load run (every request completes or
/// gets 429, blocks in use return to zero, the process's memory does not grow), printed as a table.</para>
/// </summary>
public static class ServeBench
{
    public static int Run(string[] args)
    {
        string device = "cuda", preset = "llama-1b";
        string? dtypeName = null;                                // bf16 on CUDA, f32 on the CPU (which computes in F32 or F64)
        int prompt = 512, newTokens = 128, rounds = 2, maxBatch = 128, tokenBudget = 8192, clients = 256, seconds = 60;
        int decodingStepTokens = new SchedulerOptions().DecodingStepTokens;
        bool phaseSync = false, deviceTime = false, asyncScheduling = true, advanceOnDevice = false;
        int draftTokens = 0;
        bool uniformDrafts = false;
        string? cudaOptions = null, modelDir = null, draftPreset = null, draftDir = null;
        int[] levels = [1, 8, 32, 64, 128];
        double? kvGiB = null;
        bool graphs = true, load = false, hostSampling = false;
        double temperature = 0, topP = 1, frequencyPenalty = 0;
        int? logprobs = null;
        var quantization = Tessera.Nn.Quantization.WeightQuantization.None;
        DType? kvDType = null;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => args[++i];
            int Int() => int.Parse(Next(), CultureInfo.InvariantCulture);
            switch (args[i])
            {
                case "--device": device = Next(); break;
                case "--preset": preset = Next(); break;
                case "--dtype": dtypeName = Next(); break;
                case "--prompt": prompt = Int(); break;
                case "--new": newTokens = Int(); break;
                case "--rounds": rounds = Int(); break;
                case "--max-batch": maxBatch = Int(); break;
                case "--token-budget": tokenBudget = Int(); break;
                case "--decoding-step-tokens": decodingStepTokens = Int(); break;
                case "--phase-sync": phaseSync = true; break;
                case "--device-time": deviceTime = true; break;
                case "--no-phase-sync": phaseSync = false; break;   // the default; kept so that older commands run
                case "--no-async": asyncScheduling = false; break;
                case "--advance-on-device": advanceOnDevice = true; break;
                case "--draft-tokens": draftTokens = Int(); break;
                case "--uniform-drafts": uniformDrafts = true; break;
                case "--draft-preset": draftPreset = Next(); break;
                case "--draft-model": draftDir = Next(); break;
                case "--model": modelDir = Next(); break;
                case "--quantize": quantization = Next() switch { "int8" => Tessera.Nn.Quantization.WeightQuantization.Int8, "fp8" => Tessera.Nn.Quantization.WeightQuantization.Fp8, "int4" => Tessera.Nn.Quantization.WeightQuantization.Int4, "none" => Tessera.Nn.Quantization.WeightQuantization.None, var q => throw new ArgumentException($"--quantize {q}: expected int8, fp8, int4 or none") }; break;
                case "--kv-dtype": kvDType = Next() switch { "int8" => DType.I8, "fp8" => DType.F8E4M3, "model" => null, var k => throw new ArgumentException($"--kv-dtype {k}: expected model (the model's dtype), int8 or fp8") }; break;
                case "--cuda-options": cudaOptions = Next(); break;
                case "--kv-memory": kvGiB = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--concurrency": levels = Next().Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--no-graphs": graphs = false; break;
                case "--load": load = true; break;
                case "--clients": clients = Int(); break;
                case "--temperature": temperature = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--top-p": topP = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--host-sampling": hostSampling = true; break;
                case "--logprobs": logprobs = Int(); break;
                case "--frequency-penalty": frequencyPenalty = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--seconds": seconds = Int(); break;
                default: throw new ArgumentException($"serve: unknown argument '{args[i]}'");
            }
        }
        if (load) { maxBatch = args.Contains("--max-batch") ? maxBatch : 64; }
        dtypeName ??= device.StartsWith("cuda", StringComparison.Ordinal) ? "bf16" : "f32";
        var dtype = dtypeName switch { "bf16" => DType.BF16, "f32" => DType.F32, _ => throw new ArgumentException($"--dtype {dtypeName}: expected bf16 or f32") };
        bool cuda = device.StartsWith("cuda", StringComparison.Ordinal);
        IBackend backend = cuda ? new CudaBackend(0, CudaBackendOptions.Parse(cudaOptions)) : new CpuBackend(Environment.ProcessorCount);
        // The engine's context: what the requests need (a smaller block table per step); the model's at least that.
        int context = load ? 256 : prompt + newTokens + 16;
        Transformer model;
        ITokenizer tokenizer;
        Func<Random, int[]>? corpusPrompt = null;
        if (modelDir is null)
        {
            var config = ModelPresets.Get(preset) with { MaxSequenceLength = Math.Max(context, ModelPresets.Get(preset).MaxSequenceLength) };
            model = quantization != Tessera.Nn.Quantization.WeightQuantization.None ? PretrainedModel.Quantized(config, backend, dtype, quantization: quantization) : new Transformer(config, backend, dtype);
            model.ValidateInputs = false;
            BenchmarkWeights.Initialize(model, seed: 2);
            tokenizer = new SyntheticTokenizer(config.VocabSize);
        }
        else
        {
            (model, string directory, string? trained) = TrainedModel.Load(modelDir, backend, dtype,
                quantization: quantization);
            string spec = trained ?? directory;
            tokenizer = spec == "byte" ? new ByteTokenizer() : TokenizerLoader.FromDirectory(spec);
            if (context > model.Config.MaxSequenceLength)
                throw new ArgumentException($"serve --model {modelDir}: --prompt {prompt} and --new {newTokens} need a context of {context}; the model has {model.Config.MaxSequenceLength}");
            preset = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir)));
            var corpus = tokenizer.Encode(EmbeddedCorpus.Load(1 << 20, out _)).ToArray();
            if (corpus.Length <= prompt) throw new ArgumentException($"serve --model: the embedded corpus has only {corpus.Length} tokens");
            corpusPrompt = rng => corpus.AsSpan(rng.Next(corpus.Length - prompt), prompt).ToArray();
        }
        long kvBytes = (long)((kvGiB ?? (cuda ? 24 : 0.25)) * (1L << 30));
        var options = new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = kvBytes, DType = kvDType },
            Scheduler = new SchedulerOptions
            {
                MaxBatch = maxBatch, TokenBudget = Math.Max(tokenBudget, maxBatch), DecodingStepTokens = decodingStepTokens, MaxQueue = load ? 128 : 4096,
            },
            MaxSequenceLength = context,
            RecordGraphs = graphs,
            SeparateStepPhases = phaseSync && !load,
            MeasureDeviceTime = deviceTime && !load,
            AsyncScheduling = asyncScheduling,
            AdvanceDecodeOnDevice = advanceOnDevice,
            SampleOnDevice = !hostSampling,
            Speculation = new SpeculationOptions
            {
                DraftTokens = draftTokens == 0 && (draftPreset ?? draftDir) is not null ? 4 : draftTokens, UniformDrafts = uniformDrafts,
            },
        };
        Transformer? draft = null;
        if (draftPreset is not null)
        {
            var draftConfig = ModelPresets.Get(draftPreset) with { MaxSequenceLength = model.Config.MaxSequenceLength, VocabSize = model.Config.VocabSize };
            draft = new Transformer(draftConfig, backend, dtype) { ValidateInputs = false };
            BenchmarkWeights.Initialize(draft, seed: 2);
        }
        else if (draftDir is not null) draft = TrainedModel.Load(draftDir, backend, dtype).Model;
        using var engine = new InferenceEngine(model, tokenizer, options, draft);
        var server = OpenAiServer.StartAsync(engine, new ChatPrompt(new ChatFormat(ChatTemplate.Fallback, null, null, true), tokenizer),
            new ServeOptions { Port = 0, ModelName = preset }).GetAwaiter().GetResult();
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 4096, PooledConnectionLifetime = Timeout.InfiniteTimeSpan })
        {
            BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromMinutes(10),
        };
        try
        {
            // The request's sampling fields: greedy by default; a fixed seed, so that a run draws the same tokens.
            string sampling = FormattableString.Invariant($"\"temperature\": {temperature}, \"top_p\": {topP}, \"seed\": 1, \"frequency_penalty\": {frequencyPenalty}")
                + (logprobs is int n ? FormattableString.Invariant($", \"logprobs\": {n}") : "");
            Console.WriteLine($"requests: temperature {temperature}, top_p {topP}, frequency_penalty {frequencyPenalty}, logprobs {(logprobs?.ToString(CultureInfo.InvariantCulture) ?? "none")}; " +
                (hostSampling ? "sampled on the host" : "sampled on the device"));
            return load ? Load(http, engine, preset, sampling, clients, seconds, maxBatch)
                : Levels(http, engine, backend as CudaBackend, model, preset, sampling, dtype, prompt, newTokens, rounds, levels, maxBatch, corpusPrompt);
        }
        finally
        {
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    private sealed record RequestStats(double FirstTokenSeconds, List<double> Gaps, int Tokens, int Status);

    /// <summary>One streaming completion; times as the client sees them.</summary>
    private static async Task<RequestStats> Stream(HttpClient http, string model, string sampling, int[] prompt, int maxTokens)
    {
        string body = $$$"""{"model": "{{{model}}}", "prompt": [{{{string.Join(',', prompt)}}}], "max_tokens": {{{maxTokens}}}, {{{sampling}}}, "stream": true, "stream_options": {"include_usage": true}}""";
        var clock = Stopwatch.StartNew();
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            await response.Content.ReadAsStringAsync().ConfigureAwait(false);
            return new RequestStats(0, [], 0, (int)response.StatusCode);
        }
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync().ConfigureAwait(false));
        double first = -1, last = 0;
        var gaps = new List<double>(maxTokens);
        int tokens = 0;
        while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
            if (line.Contains("\"usage\":{", StringComparison.Ordinal))
            {
                using var doc = JsonDocument.Parse(line.AsMemory(6));
                tokens = doc.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
                continue;
            }
            double now = clock.Elapsed.TotalSeconds;
            if (first < 0) first = now; else gaps.Add(now - last);
            last = now;
        }
        return new RequestStats(first, gaps, tokens, 200);
    }

    private static int Levels(HttpClient http, InferenceEngine engine, CudaBackend? cuda, Transformer model, string preset, string sampling, DType dtype,
        int prompt, int newTokens, int rounds, int[] levels, int maxBatch, Func<Random, int[]>? corpusPrompt)
    {
        var config = model.Config;
        var rng = new Random(7);
        int[] Prompt() => corpusPrompt?.Invoke(rng) ?? Enumerable.Range(0, prompt).Select(_ => rng.Next(config.VocabSize)).ToArray();
        double copy = cuda is null ? double.NaN : Gpu.GpuDecodeBench.DeviceCopyBandwidth(cuda);
        long weightBytes = model.WeightBytes;
        string weights = model.Layout.Storage is Tessera.Nn.Quantization.QuantizedParameterStorage q ? $"{q.Format.ToString().ToLowerInvariant()} + {dtype}" : $"{dtype}";
        long kvPerPosition = PagedKvCache.BlockBytes(engine.Options.Cache.PoolDType(dtype), config.Layers, config.EffectiveKvHeads, config.HeadSize, 1);
        if (engine.Options.Cache.DType == DType.I8) weights += ", int8 KV";
        else if (engine.Options.Cache.DType == DType.F8E4M3) weights += ", fp8 KV";
        // Warm-up, outside the timings: every level once with whole prompts and 4 new tokens, so that every batch-size bucket
        // is recorded and the prefill steps' products at large row counts have spent the backend's algorithm-timing budget
        // (a product timed during a measured level makes the engine wait: session 13 saw a 64-stream level run alone with
        // mixed steps of 13.6 ms against 8.3 after the other levels).
        foreach (int n in levels)
        {
            var warm = Enumerable.Range(0, n).Select(_ => Prompt()).ToArray();
            Task.WhenAll(warm.Select(p => Stream(http, preset, sampling, p, 4))).GetAwaiter().GetResult();
        }

        var phases = new List<(int Level, StepPhaseTimes Decode, StepPhaseTimes Mixed)>();
        var floors = new List<(int Level, int Generated, double Wall, ServingFloor Floor)>();
        var ops = new List<(int Level, long Steps, string Table)>();
        var speculation = new List<(int Level, long Drafts, long Accepted)>();
        Console.WriteLine($"| system | model | dtype | concurrency | requests | prompt | new | generated tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | ITL mean ms | steps | ms/step | pipelined steps | roofline share |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (int n in levels)
        {
            long steps0 = engine.Metrics.Steps, pipelined0 = engine.PipelinedSteps;
            long drafts0 = engine.Metrics.DraftTokens, accepted0 = engine.Metrics.AcceptedDraftTokens;
            var (decode0, mixed0) = (engine.Metrics.DecodeStepPhases, engine.Metrics.MixedStepPhases);
            // Every client's prompts are drawn here, in order, before any client starts: System.Random is not thread-safe, and
            // drawn from the clients' continuations (as until session 13) it could be corrupted into returning zeros, making
            // the prompts identical and their prefill a prefix-cache hit (one 128-stream level ran 6 prefill steps for 256 prompts).
            var prompts = Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, rounds).Select(_ => Prompt()).ToArray()).ToArray();
            cuda?.Profiler?.Reset();                         // the engine is idle between levels: the per-op table is this level's
            var clock = Stopwatch.StartNew();
            var results = Task.WhenAll(prompts.Select(async mineToSend =>
            {
                var mine = new List<RequestStats>();
                foreach (var p in mineToSend) mine.Add(await Stream(http, preset, sampling, p, newTokens).ConfigureAwait(false));
                return mine;
            })).GetAwaiter().GetResult().SelectMany(x => x).ToList();
            double wall = clock.Elapsed.TotalSeconds;
            long steps = engine.Metrics.Steps - steps0;
            speculation.Add((n, engine.Metrics.DraftTokens - drafts0, engine.Metrics.AcceptedDraftTokens - accepted0));
            phases.Add((n, engine.Metrics.DecodeStepPhases.Minus(decode0), engine.Metrics.MixedStepPhases.Minus(mixed0)));
            if (cuda?.Profiler is { } profiler) ops.Add((n, steps, profiler.Table(1)));
            int generated = results.Sum(r => r.Tokens);
            var ttft = results.Select(r => r.FirstTokenSeconds * 1000).Order().ToArray();
            var itl = results.SelectMany(r => r.Gaps).Select(g => g * 1000).Order().ToArray();
            // Roofline: per decode step the weights once and the cached keys and values of the batch (on average the prompt
            // plus half the new tokens per sequence; ServingFloor.StepBytes), at the measured step rate.
            double batch = Math.Min(n, maxBatch), stepsPerSecond = steps / wall;
            var floor = ServingFloor.For(config, n * rounds, rounds, (int)batch, prompt, newTokens, weightBytes, kvPerPosition,
                ServingFloor.H200ProductPeak, copy);
            string roofline = double.IsNaN(copy) ? "n/a (CPU)" : $"{floor.StepBytes * stepsPerSecond / copy:P1} of {copy / 1e12:F2} TB/s";
            if (!double.IsNaN(copy)) floors.Add((n, results.Sum(r => r.Tokens), wall, floor));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| Tessera (HTTP) | {preset} | {weights} | {n} | {results.Count} | {prompt} | {newTokens} | {generated / wall:F0} | {Pct(ttft, 0.5):F1} | {Pct(ttft, 0.99):F1} | {Pct(itl, 0.5):F2} | {Pct(itl, 0.99):F2} | {(itl.Length > 0 ? itl.Average() : double.NaN):F3} | {steps} | {wall * 1000 / Math.Max(steps, 1):F2} | {engine.PipelinedSteps - pipelined0} | {roofline} |"));
        }
        Console.WriteLine();
        PrintFloors(floors);
        if (engine.Options.Speculation.Enabled)
            foreach (var (level, drafts, accepted) in speculation)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"Speculation at {level}: {drafts} draft tokens verified, {accepted} accepted ({(drafts > 0 ? (double)accepted / drafts : 0):P1})"));
        if (engine.Options.Speculation.UniformDrafts)
            Console.WriteLine($"UniformDrafts: {engine.UniformVerificationSteps} steps verified in a bucket's layout, {engine.ReplayedSteps} steps replayed (warm-up included)");
        if (engine.Options.AdvanceDecodeOnDevice)
            Console.WriteLine($"AdvanceDecodeOnDevice: {engine.MetadataCopiesSkipped} decode steps copied no metadata (of {engine.Metrics.Steps} steps, warm-up included)");
        PrintPhases(phases, engine.Options.SeparateStepPhases);
        // --cuda-options ProfileOps=true: per level, every op the engine enqueued outside a CUDA graph (prefill and mixed steps,
        // and decode steps when graphs are off), summed over the level in milliseconds; products are named by their shape, so a
        // slow row count shows as its own row.
        foreach (var (level, steps, table) in ops)
        {
            Console.WriteLine();
            Console.WriteLine($"Per-op GPU time over the {level}-stream level ({steps} engine steps; graphed decode steps are not seen):");
            Console.WriteLine();
            Console.WriteLine(table);
        }
        if (cuda is { MatMulTuningLog.Count: > 0 })
        {
            Console.WriteLine("cuBLASLt algorithms timed on first use:");
            foreach (var line in cuda.MatMulTuningLog) Console.WriteLine("  " + line);
        }
        return 0;
    }

    private static int Load(HttpClient http, InferenceEngine engine, string preset, string sampling, int clients, int seconds, int maxBatch)
    {
        int completed = 0, rejected = 0, failed = 0;
        var process = Process.GetCurrentProcess();
        var rng = new Random(11);
        long Memory() { GC.Collect(); GC.WaitForPendingFinalizers(); process.Refresh(); return process.WorkingSet64; }
        async Task Client(int id, DateTime until)
        {
            var mine = new Random(id);
            while (DateTime.UtcNow < until)
            {
                var prompt = Enumerable.Range(0, mine.Next(4, 64)).Select(_ => mine.Next(engine.Model.Config.VocabSize)).ToArray();
                var stats = await Stream(http, preset, sampling, prompt, mine.Next(8, 64)).ConfigureAwait(false);
                if (stats.Status == 200 && stats.Tokens > 0) Interlocked.Increment(ref completed);
                else if (stats.Status == 429) { Interlocked.Increment(ref rejected); await Task.Delay(mine.Next(10, 100)).ConfigureAwait(false); }
                else Interlocked.Increment(ref failed);
            }
        }
        var warm = DateTime.UtcNow.AddSeconds(Math.Min(10, seconds / 6.0));
        Task.WhenAll(Enumerable.Range(0, clients).Select(i => Client(i, warm))).GetAwaiter().GetResult();
        long before = Memory();
        int completedWarm = completed;
        var clock = Stopwatch.StartNew();
        Task.WhenAll(Enumerable.Range(0, clients).Select(i => Client(1000 + i, DateTime.UtcNow.AddSeconds(seconds)))).GetAwaiter().GetResult();
        double wall = clock.Elapsed.TotalSeconds;
        Thread.Sleep(200);
        long after = Memory();
        var m = engine.Metrics;
        Console.WriteLine("| clients | max batch | seconds | completed | 429 | failed | KV blocks in use after | working set before MB | after MB | generated tokens/s |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| {clients} | {maxBatch} | {wall:F0} | {completed - completedWarm} | {rejected} | {failed} | {m.KvBlocksInUse} | {before / 1e6:F0} | {after / 1e6:F0} | {m.GeneratedTokens / Math.Max(wall, 1e-9):F0} |"));
        return failed == 0 && m.KvBlocksInUse == 0 ? 0 : 1;
    }

    /// <summary>
    /// Where the engine thread's steps spent their time per level: per step kind, the steps, rows per step and milliseconds
    /// per step of each phase (the engine's <see cref="StepPhaseTimes"/>), and the share of the level's engine time.
    /// </summary>
    private static void PrintPhases(List<(int Level, StepPhaseTimes Decode, StepPhaseTimes Mixed)> phases, bool separated)
    {
        Console.WriteLine(separated
            ? "Engine step phases (ms per step; the engine waits for the device between phases, so forward includes its device time):"
            : "Engine step phases (ms per step; phases not separated: the forward's device time falls in readback):");
        bool device = phases.Any(p => p.Decode.DeviceBusy > 0 || p.Mixed.DeviceBusy > 0);
        Console.WriteLine("| concurrency | steps | kind | rows/step | schedule | metadata + H2D | forward | D2H readback | emit (sample, detokenize, SSE events) | total | share of engine time |"
            + (device ? " device busy | device idle before |" : ""));
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|" + (device ? "---|---|" : ""));
        foreach (var (level, decode, mixed) in phases)
        {
            double all = decode.Total + mixed.Total;
            foreach (var (kind, t) in new[] { ("decode", decode), ("mixed", mixed) })
            {
                if (t.Steps == 0) continue;
                double ms(double seconds) => seconds * 1000 / t.Steps;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {level} | {t.Steps} | {kind} | {t.Rows / (double)t.Steps:F1} | {ms(t.Schedule):F3} | {ms(t.Metadata):F3} | {ms(t.Forward):F3} | {ms(t.Readback):F3} | {ms(t.Emit):F3} | {ms(t.Total):F3} | {t.Total / Math.Max(all, 1e-12):P0} |")
                    + (device ? string.Create(CultureInfo.InvariantCulture, $" {ms(t.DeviceBusy):F3} | {ms(t.DeviceIdle):F3} |") : ""));
            }
        }
    }

    // What no server could beat at each level (ServingFloor): prefill and decode in turn, perfectly overlapped, and overlapped
    // but with the last prompt's decode steps after every prefill (the bound).
    private static void PrintFloors(List<(int Level, int Generated, double Wall, ServingFloor Floor)> floors)
    {
        if (floors.Count == 0) return;
        Console.WriteLine($"Floors (products at {ServingFloor.H200ProductPeak / 1e12:F0} TFLOP/s, each decode step's weights and cached keys and values at the copy bandwidth; ServingFloor):");
        Console.WriteLine("| concurrency | prefill TFLOP | decode TFLOP | steps | GB a step | floor in turn, tokens/s | floor overlapped, tokens/s | bound (last prefill, then its decodes), tokens/s | measured / bound |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var (level, generated, wall, f) in floors)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {level} | {f.PrefillTflop:F1} | {f.DecodeTflop:F1} | {f.Steps} | {f.StepBytes / 1e9:F2} | {generated / f.InTurn:F0} | {generated / f.Overlapped:F0} | {generated / f.Dependent:F0} | {generated / wall / (generated / f.Dependent):P1} |"));
        Console.WriteLine();
    }

    private static double Pct(double[] sorted, double q) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
}
