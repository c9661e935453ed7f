using Tessera.Cli.Output;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Runs;

namespace Tessera.Cli.Commands.Train;

/// <summary>The shards of a run, opened (and their headers validated) before anything is built or written.</summary>
/// <param name="TrainPaths">Training shard paths.</param>
/// <param name="Train">A loader over them for one device (rank 0 of 1).</param>
/// <param name="Validation">A loader over the validation shards, or null.</param>
/// <param name="ValidationPaths">Validation shard paths (possibly none).</param>
public sealed record TrainingData(IReadOnlyList<string> TrainPaths, TokenDataLoader Train, TokenDataLoader? Validation, IReadOnlyList<string> ValidationPaths)
{
    /// <summary>Every shard, training then validation.</summary>
    public IEnumerable<string> AllPaths => TrainPaths.Concat(ValidationPaths);

    /// <summary>Number of training shards.</summary>
    public int TrainShards => TrainPaths.Count;

    /// <summary>A loader of slice <paramref name="rank"/> of <paramref name="world"/> (a data-parallel rank's).</summary>
    public TokenDataLoader ForRank(TrainerOptions options, int rank, int world) =>
        new(TrainPaths, options.BatchSize, options.SequenceLength, rank, world);

    /// <summary>Opens the shards given, or writes the embedded corpus into the run's data/ (once) and opens those.</summary>
    public static TrainingData Open(TrainSettings settings, TrainerOptions options, RunDirectory run, Terminal terminal)
    {
        List<string> train, validation;
        if (settings.Data is null)
            (train, validation) = EmbeddedShards(run.DataPath, terminal);
        else
        {
            train = ShardWriter.Expand(settings.Data);
            validation = settings.ValidationData is null ? [] : ShardWriter.Expand(settings.ValidationData);
        }
        return new TrainingData(train, new TokenDataLoader(train, options.BatchSize, options.SequenceLength),
            validation.Count > 0 ? new TokenDataLoader(validation, options.BatchSize, options.SequenceLength) : null, validation);
    }

    private static (List<string>, List<string>) EmbeddedShards(string dataDir, Terminal terminal)
    {
        var trainPath = Path.Combine(dataDir, "train_000.bin");
        var valPath = Path.Combine(dataDir, "val_000.bin");
        if (!File.Exists(trainPath) || !File.Exists(valPath))
        {
            var text = EmbeddedCorpus.Load(4_000_000, out var source);
            var bytes = System.Text.Encoding.UTF8.GetBytes(text);
            ShardWriter.WriteSplit(Array.ConvertAll(bytes, b => (int)b), dataDir, 0.05, int.MaxValue);
            terminal.Line($"corpus: {source}, {bytes.Length:N0} bytes -> {dataDir}");
        }
        terminal.Line($"corpus unigram entropy: {UnigramEntropy(TokenShard.ReadTokens(trainPath)):F3} nats/token (a model that learns nothing beyond byte frequencies stays near this)");
        return ([trainPath], [valPath]);
    }

    /// <summary>Entropy of the token frequency distribution, in nats.</summary>
    internal static double UnigramEntropy(ReadOnlySpan<ushort> tokens)
    {
        var counts = new long[65536];
        foreach (var t in tokens) counts[t]++;
        double h = 0;
        foreach (var c in counts)
            if (c > 0) { double p = (double)c / tokens.Length; h -= p * Math.Log(p); }
        return h;
    }
}
