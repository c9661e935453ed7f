using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>Bad input reaches the user as one clear message and a non-zero exit, and changes nothing on disk.</summary>
public sealed class BadInputTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-cli-").FullName;
    private static readonly string GoldenGpt2 = Path.Combine(AppContext.BaseDirectory, "Golden", "gpt2-debug");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string CopyModel()
    {
        var dir = Directory.CreateDirectory(Path.Combine(_dir, "model")).FullName;
        foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(GoldenGpt2, f), Path.Combine(dir, f));
        return dir;
    }

    private static Dictionary<string, byte[]> Snapshot(string dir) =>
        Directory.GetFiles(dir, "*", SearchOption.AllDirectories).ToDictionary(f => f, File.ReadAllBytes);

    private static void AssertUnchanged(Dictionary<string, byte[]> before, string dir)
    {
        var after = Snapshot(dir);
        Assert.Equal(before.Keys.Order(), after.Keys.Order());
        foreach (var (f, b) in before) Assert.Equal(b, after[f]);
    }

    [Fact]
    public void ATokenizerLargerThanTheModelsVocabularyFailsNamingBothSizes()
    {
        var model = CopyModel();
        // gpt2-debug has 96 embedding rows; the byte tokenizer's 256 ids do not all have one (ids 96..255 would index past
        // the table), so generate refuses the pair before encoding anything.
        var (code, _, err) = CliProcess.Run("generate", "--model", model, "--tokenizer", "byte", "--prompt", new string('A', 40), "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("the tokenizer has 256 tokens", err);
        Assert.Contains("96 rows", err);
    }

    [Fact]
    public void PromptLongerThanTheContextFails()
    {
        // gpt2-debug holds 32 positions; a prompt of 40 tokens does not fit (the library check the command relies on).
        var config = Tessera.Models.ModelPresets.Get("gpt2-debug");
        var model = new Tessera.Models.Transformer(config, new Tessera.Tensors.Cpu.CpuBackend(1), Tessera.Tensors.DType.F32);
        var e = Assert.Throws<ArgumentException>(() => new Tessera.Inference.TextGenerator(model).Generate(Enumerable.Repeat(65, 40).ToArray(), new Tessera.Inference.GenerationOptions()));
        Assert.Contains("40 tokens", e.Message);
        Assert.Contains("context", e.Message);
    }

    [Fact]
    public void TruncatedWeightsFileFailsNamingTheFile()
    {
        var model = CopyModel();
        var weights = Path.Combine(model, "model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        File.WriteAllBytes(weights, bytes[..^100]);
        var before = Snapshot(model);
        var (code, _, err) = CliProcess.Run("generate", "--model", model, "--tokenizer", "byte", "--prompt", "AB", "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("model.safetensors", err);
        AssertUnchanged(before, model);
    }

    [Fact]
    public void ConfigWithAMissingFieldFailsNamingTheField()
    {
        var model = CopyModel();
        var config = Path.Combine(model, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"n_layer\"", "\"n_layers_typo\""));
        var before = Snapshot(model);
        var (code, _, err) = CliProcess.Run("generate", "--model", model, "--tokenizer", "byte", "--prompt", "AB", "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("config.json", err);
        Assert.Contains("n_layer", err);
        AssertUnchanged(before, model);
    }

    [Fact]
    public void ShardWithABadHeaderFailsBeforeTheRunWritesAnything()
    {
        var shard = Path.Combine(_dir, "train_000.bin");
        TokenShard.Write(shard, Enumerable.Range(0, 5000).Select(i => i % 96).ToArray());
        var bytes = File.ReadAllBytes(shard);
        bytes[0] = 0;   // break the magic number
        File.WriteAllBytes(shard, bytes);
        var outDir = Path.Combine(_dir, "run");
        var (code, _, err) = CliProcess.Run("train", "--model", "gpt2-tiny", "--data", shard, "--out", outDir, "--steps", "1", "--seq", "16", "--batch", "2", "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("train_000.bin", err);
        Assert.Contains("magic", err);
        Assert.False(Directory.Exists(outDir), "a failed run must not leave a run directory");
    }

    [Fact]
    public void UnknownOptionIsAUsageErrorNamingIt()
    {
        var (code, _, err) = CliProcess.Run("train", "--stpes", "3");
        Assert.Equal(2, code);
        Assert.Contains("--stpes", err);
    }

    [Fact]
    public void Bf16TrainingOnTheCpuIsAUsageErrorNamingTheDevice()
    {
        var (code, _, err) = CliProcess.Run("train", "--dtype", "bf16", "--ranks", "2", "--steps", "1");
        Assert.Equal(2, code);
        Assert.Contains("--device cuda", err);
    }

    [Fact]
    public void Bf16GenerationOnTheCpuIsAUsageErrorNamingTheDevice()
    {
        var (code, _, err) = CliProcess.Run("generate", "--model", _dir, "--prompt", "x", "--dtype", "bf16");
        Assert.Equal(2, code);
        Assert.Contains("--device cuda", err);
    }

    [Fact]
    public void TokenOutsideTheVocabularyIsRefusedBeforeTrainingNamingTheShardAndOffset()
    {
        var shard = Path.Combine(_dir, "train_000.bin");
        var tokens = Enumerable.Range(0, 5000).Select(i => i % 200).ToArray();
        tokens[4321] = 300;   // gpt2-tiny's vocabulary is 256 bytes
        TokenShard.Write(shard, tokens);
        var outDir = Path.Combine(_dir, "run");
        var (code, _, err) = CliProcess.Run("train", "--model", "gpt2-tiny", "--data", shard, "--out", outDir, "--steps", "1", "--seq", "16", "--batch", "2", "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("train_000.bin: token 300 at offset 4321", err);
        Assert.Contains("vocabulary of 256", err);
        Assert.False(File.Exists(Path.Combine(outDir, "metrics.jsonl")), "nothing was trained, so nothing was logged");
    }
}
