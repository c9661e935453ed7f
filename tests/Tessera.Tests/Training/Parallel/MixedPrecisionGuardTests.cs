using Tessera.Distributed.InProcess;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

public sealed class MixedPrecisionGuardTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-guard-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void DataParallelTrainingRefusesAMixedPrecisionModelInsteadOfBypassingItsMasters()
    {
        var shard = Path.Combine(_dir, "train.bin");
        TokenShard.Write(shard, Enumerable.Range(0, 200).Select(i => i % 96).ToArray());
        var model = new Transformer(ModelPresets.Get("gpt2-debug"), new CpuBackend(1), DType.BF16);
        Assert.NotNull(model.Parameters.Masters);
        var group = InProcessProcessGroup.Create(1, TimeSpan.FromSeconds(5))[0];
        var e = Assert.Throws<NotSupportedException>(() => new DataParallelTrainer(model, group, new TokenDataLoader([shard], 2, 8, 0, 1),
            new TrainerOptions { BatchSize = 2, SequenceLength = 8 }, new AdamWOptions(), new DataParallelOptions()));
        Assert.Contains("mixed precision", e.Message);
    }
}
