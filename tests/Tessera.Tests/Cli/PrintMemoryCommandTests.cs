using Xunit;

namespace Tessera.Tests.Cli;

/// <summary><c>tessera train --print-memory</c>: the activation estimate, buffer by buffer, printed without touching anything.</summary>
public sealed class PrintMemoryCommandTests : IDisposable
{
    private readonly TrainRunFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    [Fact]
    public void PrintMemoryListsTheBuffersOfAMicroBatchUnderTensorParallelismAndExitsWithoutARun()
    {
        var run = _folder.Run("memory");
        // gpt2-tiny (128 wide, 4 heads, 4 blocks), micro-batches of 2 x 64 tokens in F32 on tp 2: a block's QKV output is
        // N (H/t + 2K/t) D = 128 x 192 floats.
        var (code, output, err) = CliProcess.Run(_folder.Args(run, "--tp", "2", "--batch", "2", "--seq", "64", "--print-memory"));
        Assert.True(code == 0, err);
        Assert.Contains("activation memory per rank (tp 2), F32: a micro-batch of 2 x 64 tokens (N = 128), 4 blocks", output);
        Assert.Contains("| block attn.qkv.out | (N, (H/t + 2K/t) D) | 98,304 | 4 | 0.38 |", output);
        Assert.Contains("Megatron's formula for the same layout", output);
        Assert.False(Directory.Exists(run), "printing the estimate must not create the run directory");
    }
}
