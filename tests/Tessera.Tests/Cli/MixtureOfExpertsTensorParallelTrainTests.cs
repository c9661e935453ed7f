using System.Text.Json;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>
/// <c>tessera train --tp</c> and <c>generate --tp</c> of a mixture-of-experts model end to end on CPU thread ranks: mixtral-debug
/// (byte vocabulary, fine-tuned from a Hugging Face directory of random weights, each rank reading its slice of every expert)
/// split over 2 tensor-parallel ranks trains one device's losses, its sharded checkpoint holds the whole model, and greedy
/// generation over 2 ranks gives one device's text. The library proves the layout equal in F64
/// (MixtureOfExpertsTensorParallelTests); these runs are F32, so the losses agree to 1e-4 relative (sums in another order).
/// </summary>
public sealed class MixtureOfExpertsTensorParallelTrainTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-moetpcli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);


    [Fact]
    public void TensorParallelRanksTrainAMixtureOfExpertsLikeOneDeviceAndGenerateItsText()
    {
        var run = MixtralRunCase.Write(_dir);
        string[] Common(string dir) => [.. run.Common(dir), "--steps", "3", "--batch", "4"];

        var one = Path.Combine(_dir, "one");
        var (code, stdout, stderr) = CliProcess.Run(["train", .. Common(one)]);
        Assert.True(code == 0, stderr);
        var tp = Path.Combine(_dir, "tp");
        (code, stdout, stderr) = CliProcess.Run(["train", "--tp", "2", .. Common(tp)]);
        Assert.True(code == 0, stderr);
        Assert.Contains("2 ranks as dp 1 x tp 2", stdout);
        using (var layout = JsonDocument.Parse(File.ReadAllText(Path.Combine(tp, "checkpoints", "step_000003", "parallel.json"))))
            Assert.Equal(2, layout.RootElement.GetProperty("tp").GetInt32());

        TrainRunMetrics.AssertLossesMatchOneDevice(one, tp, 3, "tp 2");

        // The tp run's checkpoint is the whole model: one device and 2 tensor-parallel ranks decode the same greedy text (F32
        // logits differ by about 1e-6, far below the gaps between the top tokens).
        (code, stdout, stderr) = CliProcess.Run("generate", "--model", tp, "--prompt", "ab", "--max-tokens", "8", "--temperature", "0", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.StartsWith("ab", stdout);
        var (tpCode, tpStdout, tpStderr) = CliProcess.Run("generate", "--model", tp, "--prompt", "ab", "--max-tokens", "8", "--temperature", "0", "--tp", "2");
        Assert.True(tpCode == 0, tpStderr);
        Assert.Contains("over 2 tensor-parallel thread ranks", tpStderr);
        Assert.Equal(stdout, tpStdout);
    }

    [Theory]
    [InlineData("--ep 2: expert parallelism: ep (2) is built with data parallelism only; mesh (dp 2, pp 1, tp 2, cp 1) also splits over tp", "--model", "mixtral-debug", "--ranks", "4", "--tp", "2", "--ep", "2")]
    public void ExpertParallelismWithTensorParallelismIsAUsageError(string message, params string[] args)
    {
        var run = Path.Combine(_dir, "refused");
        var (code, _, stderr) = CliProcess.Run(["train", "--steps", "1", "--out", run, .. args]);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
        Assert.False(Directory.Exists(Path.Combine(run, "checkpoints")));
    }
}
