using Tessera.Training.Data;

namespace Tessera.Tests.Cli;

/// <summary>A temporary folder with one byte-token shard, and the arguments of a small, quick training run on it.</summary>
public sealed class TrainRunFolder : IDisposable
{
    public TrainRunFolder()
    {
        // Deterministic, non-trivial text: 20,000 byte tokens of a repeated sentence with a counter.
        var tokens = string.Concat(Enumerable.Range(0, 800).Select(i => $"line {i % 97}: the fox. ")).Select(c => (int)c).Take(20_000).ToArray();
        TokenShard.Write(Shard, tokens);
    }

    public string Root { get; } = Directory.CreateTempSubdirectory("tessera-train-").FullName;

    public string Shard => Path.Combine(Root, "train_000.bin");

    public string Run(string name) => Path.Combine(Root, name);

    /// <summary>gpt2-tiny on the shard, one thread, no sample, no validation; <paramref name="extra"/> appended.</summary>
    public string[] Args(string run, params string[] extra) =>
        ["train", "--model", "gpt2-tiny", "--data", Shard, "--out", run, "--threads", "1", "--sample-tokens", "0", "--eval-every", "0", .. extra];

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
