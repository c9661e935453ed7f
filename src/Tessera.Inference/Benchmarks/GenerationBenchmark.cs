using System.Diagnostics;
using Tessera.Models;
using Tessera.Tensors;

namespace Tessera.Inference.Benchmarks;

/// <summary>
/// Times generation through <see cref="TextGenerator"/> (KV cache, decode step replayed where the backend records) as serving runs it:
/// a random prompt is prefilled, then tokens are decoded one at a time. Prefill tokens/s = prompt length / time to the
/// first token; decode tokens/s = (new tokens - 1) / time from the first token to the last. Decoding one token reads
/// every weight once plus the keys and values of every cached position, so those bytes over the decode time are the
/// achieved memory bandwidth, the number decode speed is bounded by.
/// </summary>
public sealed class GenerationBenchmark
{
    private readonly Transformer _model;
    private readonly Func<long>? _peakDeviceBytes;

    /// <summary>
    /// Prepares a benchmark of <paramref name="model"/> (its weights loaded or initialized by the caller);
    /// <paramref name="peakDeviceBytes"/>, when given, is read after the last round.
    /// </summary>
    /// <exception cref="ArgumentException">The options are invalid or do not fit the model's context.</exception>
    public GenerationBenchmark(Transformer model, GenerationBenchmarkOptions options, Func<long>? peakDeviceBytes = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        Options = options.Validate(model.Config);
        _model = model;
        _peakDeviceBytes = peakDeviceBytes;
    }

    /// <summary>The validated settings.</summary>
    public GenerationBenchmarkOptions Options { get; }

    /// <summary>Runs every round and returns the medians of the measured ones.</summary>
    /// <exception cref="InvalidOperationException">A round produced fewer tokens than asked for.</exception>
    public GenerationBenchmarkResult Run()
    {
        var config = _model.Config;
        int promptLength = Options.PromptLength, newTokens = Options.NewTokens;
        var rng = new Random(Options.Seed);
        var prompt = new int[promptLength];
        for (int i = 0; i < prompt.Length; i++) prompt[i] = rng.Next(config.VocabSize);
        var generator = new TextGenerator(_model);
        var generation = Options.Generation with { MaxNewTokens = newTokens, StopTokens = [] };

        var prefill = new List<double>();
        var decode = new List<double>();
        bool replayed = false;
        for (int round = 0; round < Options.Rounds; round++)
        {
            long start = Stopwatch.GetTimestamp();
            double first = 0;
            int produced = 0;
            foreach (var _ in generator.Generate(prompt, generation))
                if (produced++ == 0) first = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            double total = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            if (produced != newTokens)
                throw new InvalidOperationException($"generation benchmark: round {round + 1} produced {produced} tokens, expected {newTokens}");
            if (round == 0 && Options.Rounds > 1) continue;   // the warm-up round
            prefill.Add(first);
            decode.Add(total - first);
            replayed = generator.LastRunRecorded;
        }

        int decoded = newTokens - 1;
        double elementBytes = _model.DType.SizeInBytes();
        // Decode step i (1..decoded) attends over promptLength + i cached positions; the mean is promptLength + (decoded + 1) / 2.
        double meanCached = promptLength + (decoded + 1) / 2.0;
        return new GenerationBenchmarkResult
        {
            ParameterCount = _model.Layout.ParameterCount,
            PromptLength = promptLength,
            NewTokens = newTokens,
            MeasuredRounds = prefill.Count,
            PrefillMilliseconds = Median(prefill),
            DecodeMilliseconds = Median(decode),
            WeightBytesPerToken = _model.WeightBytes,
            KvCacheBytesPerToken = 2.0 * config.Layers * meanCached * config.EffectiveKvHeads * config.HeadSize * elementBytes,
            DecodeStepReplayed = replayed,
            PeakDeviceBytes = _peakDeviceBytes?.Invoke(),
        };
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }
}
