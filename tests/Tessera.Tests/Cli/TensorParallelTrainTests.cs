using System.Text.Json;
using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>
/// <c>tessera train --tp</c> end to end on CPU thread ranks: a dp x tp mesh (with sequence parallelism) trains the losses of
/// one device on the same global batch, its checkpoint resumes on another mesh and on one device, and generate reads it.
/// The library proves the layouts equal in F64 (TensorParallelTests, TensorDataParallelTests); here the runs are F32, so
/// losses agree to 1e-4 relative (sums over 4 x 16 tokens and 842k parameters in another order; observed about 1e-6).
/// </summary>
public sealed class TensorParallelTrainTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-tpcli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void TensorTimesDataParallelRanksTrainLikeOneDeviceAndTheirCheckpointResumesOnAnotherMesh()
    {
        var data = Path.Combine(_dir, "data");
        TokenShard.Write(Path.Combine(data, "train_000.bin"), Enumerable.Range(0, 4000).Select(i => (i * 37 + i / 7) % 256).ToArray());
        string[] Common(string run) => ["--model", "gpt2-tiny", "--data", Path.Combine(data, "train_000.bin"), "--out", run, "--seq", "16",
            "--threads", "2", "--log-every", "1", "--sample-tokens", "0", "--eval-every", "0", "--warmup", "1"];

        var one = Path.Combine(_dir, "one");
        var (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "3", "--batch", "4", "--micro", "2", .. Common(one)]);
        Assert.True(code == 0, stderr);

        var mesh = Path.Combine(_dir, "mesh");
        (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "2", "--batch", "2", "--ranks", "4", "--tp", "2", "--sp", .. Common(mesh)]);
        Assert.True(code == 0, stderr);
        Assert.Contains("4 ranks as dp 2 x tp 2 with sequence parallelism, ZeRO stage 0, global batch 2 x 2 x 16", stdout);
        var checkpoint = Path.Combine(mesh, "checkpoints", "step_000002");
        using (var layout = JsonDocument.Parse(File.ReadAllText(Path.Combine(checkpoint, "parallel.json"))))
        {
            Assert.Equal(2, layout.RootElement.GetProperty("tp").GetInt32());
            Assert.Equal(2, layout.RootElement.GetProperty("dp").GetInt32());
        }

        // The third step on another mesh: tp 2 alone (two ranks, one data-parallel group) with the whole global batch.
        (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "3", "--batch", "4", "--tp", "2", "--resume", .. Common(mesh)]);
        Assert.True(code == 0, stderr);
        Assert.Contains("resuming", stdout);
        Assert.Contains("2 ranks as dp 1 x tp 2", stdout);

        TrainRunMetrics.AssertLossesMatchOneDevice(one, mesh, 3, "mesh");

        // The tensor-parallel checkpoint holds the whole model for generate (and any Hugging Face reader); split over two
        // thread ranks, greedy decoding gives one device's text (8 tokens; F32 logits differ by about 1e-6, far below the gaps).
        (code, stdout, stderr) = CliProcess.Run("generate", "--model", mesh, "--prompt", "ab", "--max-tokens", "8", "--temperature", "0", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.StartsWith("ab", stdout);
        var (tpCode, tpStdout, tpStderr) = CliProcess.Run("generate", "--model", mesh, "--prompt", "ab", "--max-tokens", "8", "--temperature", "0", "--tp", "2");
        Assert.True(tpCode == 0, tpStderr);
        Assert.Contains("over 2 tensor-parallel thread ranks", tpStderr);
        Assert.Equal(stdout, tpStdout);
    }

    [Theory]
    [InlineData("--tp 3: tensor parallelism: tp (3) must divide the attention heads (Heads = 4)", "--tp", "3")]
    [InlineData("--sp (sequence parallelism) splits the norms over the tensor-parallel ranks: it needs --tp of 2 or more", "--sp")]
    [InlineData("--tp 2 must divide --ranks 3", "--tp", "2", "--ranks", "3")]
    public void ImpossibleMeshesAreUsageErrorsNamingTheOption(string message, params string[] args)
    {
        var run = Path.Combine(_dir, "refused");
        var (code, _, stderr) = CliProcess.Run(["train", "--steps", "1", "--out", run, .. args]);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
        Assert.False(Directory.Exists(Path.Combine(run, "checkpoints")));
    }
}
