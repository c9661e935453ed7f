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
/// <c>tessera train --ep</c> end to end on CPU thread ranks: mixtral-debug (with the byte vocabulary, fine-tuned from a Hugging
/// Face directory of random weights) with its experts split over 2 ranks of 4 data-parallel
/// ones trains the losses of one device on the same global batch, its checkpoint (the whole model) resumes on plain data-parallel
/// ranks, and generate reads it. The library proves the layout equal in F64 (ExpertParallelTrainingTests); these runs are F32, so
/// the losses agree to 1e-4 relative (sums in another order). And every misuse of --ep is a usage error naming it.
/// </summary>
public sealed class ExpertParallelTrainTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-epcli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);


    [Fact]
    public void ExpertParallelRanksTrainLikeOneDeviceAndTheirCheckpointResumesWithoutEp()
    {
        var run = MixtralRunCase.Write(_dir);
        string[] Common(string dir) => [.. run.Common(dir)];

        var one = Path.Combine(_dir, "one");
        var (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "3", "--batch", "4", "--micro", "1", .. Common(one)]);
        Assert.True(code == 0, stderr);

        var ep = Path.Combine(_dir, "ep");
        (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "2", "--batch", "1", "--ranks", "4", "--ep", "2", .. Common(ep)]);
        Assert.True(code == 0, stderr);
        Assert.Contains("4 data-parallel rank(s), experts split over ep 2 (expert data parallel 2), ZeRO stage 0", stdout);
        var checkpoint = Path.Combine(ep, "checkpoints", "step_000002");
        using (var layout = JsonDocument.Parse(File.ReadAllText(Path.Combine(checkpoint, "parallel.json"))))
        {
            var parameters = layout.RootElement.GetProperty("parameters");
            Assert.True(parameters.TryGetProperty("blocks.1.mlp.experts.3.proj.weight", out _));   // held by ep rank 1 only
        }

        // The third step on 2 plain data-parallel ranks (every expert on every rank), from the ep run's checkpoint.
        (code, stdout, stderr) = CliProcess.Run(["train", "--steps", "3", "--batch", "2", "--ranks", "2", "--resume", .. Common(ep)]);
        Assert.True(code == 0, stderr);
        Assert.Contains("resuming", stdout);

        TrainRunMetrics.AssertLossesMatchOneDevice(one, ep, 3, "ep");

        (code, stdout, stderr) = CliProcess.Run("generate", "--model", ep, "--prompt", "ab", "--max-tokens", "4", "--temperature", "0", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.StartsWith("ab", stdout);
    }

    [Theory]
    [InlineData("--ep 2 splits the experts over data-parallel ranks: add --ranks", "--model", "mixtral-debug", "--ep", "2")]
    [InlineData("--ep 2: the model has no experts", "--model", "gpt2-debug", "--ranks", "2", "--ep", "2")]
    [InlineData("--ep 3 must divide the model's experts (4)", "--model", "mixtral-debug", "--ranks", "3", "--ep", "3")]
    [InlineData("--ep 2: expert parallelism: ep (2) must divide dp (3)", "--model", "mixtral-debug", "--ranks", "3", "--ep", "2")]
    [InlineData("--ep 2: expert parallelism: ep (2) with ZeRO stage 1 is not built", "--model", "mixtral-debug", "--ranks", "2", "--ep", "2", "--zero", "1")]
    [InlineData("--ep 2: expert parallelism: ep (2) is built with data parallelism only", "--model", "mixtral-debug", "--ranks", "4", "--pp", "2", "--ep", "2")]
    public void MisusesOfEpAreUsageErrorsNamingIt(string message, params string[] args)
    {
        var run = Path.Combine(_dir, "refused");
        var (code, _, stderr) = CliProcess.Run(["train", "--steps", "1", "--out", run, .. args]);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
        Assert.False(Directory.Exists(Path.Combine(run, "checkpoints")));
    }
}
