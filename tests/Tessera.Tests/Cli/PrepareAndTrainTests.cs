using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Cli;

public sealed class PrepareAndTrainTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-prep-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void PreparedShardsTrainResumeAndGenerateThroughTheCli()
    {
        var text = Path.Combine(_dir, "corpus.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. ", 200)));
        var data = Path.Combine(_dir, "data");
        var (code, stdout, stderr) = CliProcess.Run("prepare", "--out", data, "--val-fraction", "0.1", text);
        Assert.True(code == 0, stderr);
        Assert.Contains("train_000.bin", stdout);
        long total = TokenShard.ReadTokenCount(Path.Combine(data, "train_000.bin")) + TokenShard.ReadTokenCount(Path.Combine(data, "val_000.bin"));
        Assert.Equal(new FileInfo(text).Length, total);   // byte tokens: one per byte

        var run = Path.Combine(_dir, "run");
        string[] common = ["--model", "gpt2-tiny", "--data", Path.Combine(data, "train_*.bin"), "--val-data", Path.Combine(data, "val_000.bin"),
            "--out", run, "--batch", "2", "--seq", "16", "--eval-every", "2", "--eval-batches", "1", "--threads", "1", "--log-every", "1", "--sample-tokens", "0"];
        (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "2", .. common]);
        Assert.True(code == 0, stderr);
        Assert.Contains("step     2/2", stdout);
        Assert.Contains("val", stdout);
        Assert.Equal(2, File.ReadAllLines(Path.Combine(run, "metrics.jsonl")).Length);

        (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "3", "--resume", .. common]);
        Assert.True(code == 0, stderr);
        Assert.Contains("resuming", stdout);
        Assert.Contains("step     3/3", stdout);
        Assert.True(Directory.Exists(Path.Combine(run, "checkpoints", "step_000003")));

        (code, stdout, stderr) = CliProcess.Run("generate", "--model", run, "--prompt", "the ", "--max-tokens", "5", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.StartsWith("the ", stdout);
        Assert.Contains("5 tokens", stderr);
    }

    [Fact]
    public void ThreadRanksWithZeroTrainAndResumeOnOneRank()
    {
        var data = Path.Combine(_dir, "data");
        TokenShard.Write(Path.Combine(data, "train_000.bin"), Enumerable.Range(0, 3000).Select(i => (i * 31) % 256).ToArray());
        var run = Path.Combine(_dir, "zero");
        string[] common = ["--model", "gpt2-tiny", "--data", Path.Combine(data, "train_000.bin"), "--out", run, "--seq", "16",
            "--threads", "2", "--log-every", "1", "--sample-tokens", "0", "--eval-every", "0"];
        var (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "2", "--batch", "2", "--ranks", "2", "--zero", "3", .. common]);
        Assert.True(code == 0, stderr);
        Assert.Contains("ZeRO stage 3", stdout);
        Assert.True(File.Exists(Path.Combine(run, "checkpoints", "step_000002", "zero_shard_00001_of_00002.safetensors")));
        // A checkpoint sharded over two ranks resumes on one (with twice the batch to keep the global batch).
        (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "3", "--batch", "4", "--resume", .. common]);
        Assert.True(code == 0, stderr);
        Assert.Contains("resuming", stdout);
        Assert.Contains("step     3/3", stdout);
    }

    [Fact]
    public void PreparingAnEmptyFileFailsAndWritesNothing()
    {
        var text = Path.Combine(_dir, "empty.txt");
        File.WriteAllText(text, "");
        var data = Path.Combine(_dir, "none");
        var (code, _, stderr) = CliProcess.Run("prepare", "--out", data, text);
        Assert.Equal(1, code);
        Assert.Contains("empty.txt", stderr);
        Assert.Contains("holds no text", stderr);
        Assert.False(Directory.Exists(data));
    }
}
