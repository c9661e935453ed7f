using System.Globalization;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>tessera bench train | generate through the real command, on the CPU with tiny shapes (a few seconds in all).</summary>
public sealed class BenchCommandTests
{
    private static readonly string GoldenGpt2 = Path.Combine(AppContext.BaseDirectory, "Golden", "gpt2-debug");

    /// <summary>The cells of the markdown table's one data row, by column heading.</summary>
    private static Dictionary<string, string> TableRow(string stdout)
    {
        var lines = stdout.Split('\n').Select(l => l.Trim()).ToList();
        int header = lines.FindIndex(l => l.StartsWith("| model ", StringComparison.Ordinal));
        Assert.True(header >= 0, "no table in:\n" + stdout);
        static string[] Cells(string line) => line.Trim('|').Split('|').Select(c => c.Trim()).ToArray();
        var names = Cells(lines[header]);
        var values = Cells(lines[header + 2]);
        Assert.Equal(names.Length, values.Length);
        return names.Zip(values).ToDictionary(p => p.First, p => p.Second);
    }

    private static double Number(string cell) => double.Parse(cell, CultureInfo.InvariantCulture);

    [Fact]
    public void TrainOnATinyPresetPrintsAStepTableWithPositiveThroughput()
    {
        var (code, stdout, stderr) = CliProcess.Run("bench", "train", "--model", "gpt2-tiny", "--batch", "2", "--micro", "1", "--seq", "32",
            "--steps", "2", "--warmup", "1", "--threads", "1");
        Assert.True(code == 0, stderr);
        var row = TableRow(stdout);
        Assert.Equal("gpt2-tiny", row["model"]);
        Assert.Equal("0.84M", row["params"]);
        Assert.Equal("2 (2x1) x 32", row["B x T"]);   // two accumulated micro-batches of one sequence
        Assert.True(Number(row["tokens/s"]) > 0);
        Assert.True(Number(row["ms/step"]) > 0);
        Assert.Equal("n/a", row["MFU"]);              // no reference peak for a CPU
    }

    [Fact]
    public void GenerateOnATinyPresetPrintsPrefillDecodeAndBandwidth()
    {
        var (code, stdout, stderr) = CliProcess.Run("bench", "generate", "--model", "gpt2-tiny", "--prompt-tokens", "8", "--max-tokens", "4", "--repeat", "2", "--threads", "1", "--no-graph");
        Assert.True(code == 0, stderr);
        var row = TableRow(stdout);
        Assert.Equal("8", row["prompt"]);
        Assert.Equal("4", row["new"]);
        Assert.Equal("eager", row["decode step"]);   // --no-graph; the CPU backend never records anyway
        Assert.True(Number(row["prefill tokens/s"]) > 0);
        Assert.True(Number(row["decode tokens/s"]) > 0);
        Assert.True(Number(row["GB/s"]) > 0);
    }

    [Fact]
    public void GenerateLoadsAModelDirectoryAndFitsTheDefaultsToItsContext()
    {
        // gpt2-debug holds 32 positions: the defaults become a 16-token prompt and 16 new tokens.
        var (code, stdout, stderr) = CliProcess.Run("bench", "generate", "--model", GoldenGpt2, "--repeat", "1", "--threads", "1");
        Assert.True(code == 0, stderr);
        var row = TableRow(stdout);
        Assert.Equal(GoldenGpt2, row["model"]);
        Assert.Equal("16", row["prompt"]);
        Assert.Equal("16", row["new"]);
        Assert.True(Number(row["decode tokens/s"]) > 0);
    }

    [Theory]
    [InlineData("--model gpt2-nope: unknown model preset 'gpt2-nope'", "train", "--model", "gpt2-nope")]
    [InlineData("--model gpt2-nope: unknown model preset 'gpt2-nope'", "generate", "--model", "gpt2-nope")]
    [InlineData("--steps (0) must be at least 1", "train", "--steps", "0")]
    [InlineData("MicroBatchSize (3) must be positive and divide BatchSize (16)", "train", "--micro", "3")]
    [InlineData("--batch, --micro: ", "train", "--micro", "3")]
    [InlineData("exceed the model's context of 128 positions", "generate", "--prompt-tokens", "100", "--max-tokens", "100")]
    [InlineData("--dtype bf16 needs --device cuda", "train", "--dtype", "bf16")]
    [InlineData("Unrecognized command or argument 'fly'", "fly")]
    [InlineData("'--stpes' was not matched", "train", "--stpes", "3")]
    public void BadInputIsAUsageErrorWithOneClearMessage(string message, params string[] args)
    {
        var (code, stdout, stderr) = CliProcess.Run(["bench", .. args]);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
        Assert.DoesNotContain("   at ", stderr);   // no stack trace
        Assert.DoesNotContain("| model", stdout);  // nothing was measured
    }

    [Fact]
    public void CudaWithoutAGpuExitsNonZeroSayingWhatIsMissing()
    {
        try
        {
            using var device = Tessera.Cuda.Runtime.CudaDevice.Open();
            Assert.Skip($"this machine has a GPU ({device.Name}); the check is for machines without one");
        }
        catch (Exception e) when (e is Tessera.Cuda.Interop.CudaUnavailableException or DllNotFoundException) { }

        var (code, stdout, stderr) = CliProcess.Run("bench", "train", "--device", "cuda", "--steps", "1", "--warmup", "0");
        Assert.Equal(1, code);
        Assert.Matches("NVIDIA driver|CUDA device|GPU", stderr);
        Assert.DoesNotContain("   at ", stderr);
        Assert.DoesNotContain("| model", stdout);   // nothing was measured
    }
}
