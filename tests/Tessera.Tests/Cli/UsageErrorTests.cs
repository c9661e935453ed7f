using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>A wrong command line exits 2 before anything runs, with a message that names the option; help and version exit 0.</summary>
public sealed class UsageErrorTests
{
    [Theory]
    [InlineData("--threads (0) must be at least 1", "train", "--threads", "0")]
    [InlineData("--threads (-3) must be at least 1", "train", "--threads", "-3")]
    [InlineData("--steps (0) must be at least 1", "train", "--steps", "0")]
    [InlineData("--micro (3) must divide --batch (16)", "train", "--micro", "3")]
    [InlineData("--dtype 'f16': expected f32, bf16 or f64", "train", "--dtype", "f16")]
    [InlineData("--dtype 'f64': expected f32 or bf16", "generate", "--model", "x", "--prompt", "y", "--dtype", "f64")]
    [InlineData("--device 'tpu': expected cpu, cuda or cuda:N", "generate", "--model", "x", "--prompt", "y", "--device", "tpu")]
    [InlineData("--top-p (2) must lie in (0, 1]", "generate", "--model", "x", "--prompt", "y", "--top-p", "2")]
    [InlineData("--model gpt2-nope: unknown model preset 'gpt2-nope'", "train", "--model", "gpt2-nope", "--out", "/nonexistent/never-written")]
    [InlineData("Option '--prompt' is required", "generate", "--model", "x")]
    [InlineData("--zero and --offload need --ranks of 2 or more", "train", "--zero", "2", "--out", "/nonexistent/never-written")]
    [InlineData("--masters split keeps the BF16 values as the F32 masters' high halves; this run trains in F32: add --dtype bf16", "train", "--masters", "split", "--out", "/nonexistent/never-written")]
    [InlineData("--masters split: LoRA keeps the base frozen", "train", "--lora", "8", "--masters", "split", "--out", "/nonexistent/never-written")]
    [InlineData("--masters split cannot be offloaded", "train", "--ranks", "2", "--zero", "1", "--offload", "--dtype", "bf16", "--masters", "split", "--out", "/nonexistent/never-written")]
    [InlineData("--masters split trains on one GPU or on launched data-parallel ranks (--zero 0-3); tensor- and pipeline-parallel ranks (--tp, --pp) keep separate masters",
        "train", "--tp", "2", "--dtype", "bf16", "--masters", "split", "--out", "/nonexistent/never-written")]
    public void BadValuesExit2NamingTheOption(string message, params string[] args)
    {
        var (code, stdout, stderr) = CliProcess.Run(args);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
        Assert.DoesNotContain("   at ", stderr);   // no stack trace
        Assert.Equal("", stdout);                  // nothing ran
    }

    [Fact]
    public void AMistypedOptionIsNamedWithTheOptionItResembles()
    {
        var (code, _, stderr) = CliProcess.Run("train", "--stpes", "3");
        Assert.Equal(2, code);
        Assert.Contains("'--stpes'", stderr);
        Assert.Contains("--steps", stderr);
    }

    [Fact]
    public void VersionAndHelpExit0()
    {
        var (code, stdout, _) = CliProcess.Run("--version");
        Assert.Equal(0, code);
        Assert.Matches(@"^\d+\.\d+\.\d+", stdout);
        (code, stdout, _) = CliProcess.Run("generate", "--help");
        Assert.Equal(0, code);
        Assert.Contains("--stop <TEXT>", stdout);
        Assert.Contains("--max-tokens <N>", stdout);
    }

    [Fact]
    public void OptionsCanComeFromAResponseFile()
    {
        var file = Path.GetTempFileName();
        try
        {
            File.WriteAllLines(file, ["--threads", "0"]);
            var (code, _, stderr) = CliProcess.Run("train", "@" + file);
            Assert.Equal(2, code);
            Assert.Contains("--threads (0) must be at least 1", stderr);   // read from the file
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public void CompletionSuggestsTheOptionsOfACommand()
    {
        var (code, stdout, _) = CliProcess.Run("[suggest:18]", "tessera train --ke");
        Assert.Equal(0, code);
        Assert.Contains("--keep-last", stdout.Split('\n').Select(l => l.Trim()));
    }
}
