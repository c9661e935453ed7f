using Tessera.Models.Safetensors;
using Tessera.Training.Checkpoints;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>tessera generate refuses damaged or diverged models before generating, and says why generation ended.</summary>
public sealed class GenerateCommandTests : IClassFixture<GenerateCommandTests.Checkpoint>
{
    private readonly Checkpoint _checkpoint;

    public GenerateCommandTests(Checkpoint checkpoint) => _checkpoint = checkpoint;

    /// <summary>A 2-step gpt2-tiny run on byte tokens.</summary>
    public sealed class Checkpoint : IDisposable
    {
        public Checkpoint()
        {
            var (code, _, err) = CliProcess.Run(Folder.Args(Run, "--steps", "2", "--batch", "2", "--seq", "16"));
            if (code != 0) throw new InvalidOperationException(err);
        }

        public TrainRunFolder Folder { get; } = new();

        public string Run => Folder.Run("run");

        public string Step => Path.Combine(Run, "checkpoints", "step_000002");

        /// <summary>A copy of the checkpoint directory to damage.</summary>
        public string Copy()
        {
            var copy = Folder.Run("copy-" + Guid.NewGuid().ToString("N")[..8]);
            Directory.CreateDirectory(copy);
            foreach (var f in Directory.GetFiles(Step)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
            return copy;
        }

        public void Dispose() => Folder.Dispose();
    }

    [Fact]
    public void NonFiniteWeightsAreRefusedNamingTheTensor()
    {
        var copy = _checkpoint.Copy();
        var weights = Path.Combine(copy, "model.safetensors");
        // Rewrite the weights with a NaN in one tensor, then re-manifest so that only the values are wrong.
        var writer = new SafetensorsWriter();
        using (var file = SafetensorsFile.Open(weights))
            foreach (var tensor in file.Tensors)
            {
                var values = file.ReadAsSingle(tensor.Name);
                if (tensor.Name == "transformer.h.1.mlp.c_fc.weight") values[7] = float.NaN;
                writer.Add(tensor.Name, tensor.Shape, values);
            }
        writer.Write(weights);
        var manifest = CheckpointManifest.Read(copy);
        manifest.Files["model.safetensors"] = CheckpointManifest.Describe(weights);
        File.WriteAllText(Path.Combine(copy, "manifest.json"), System.Text.Json.JsonSerializer.Serialize(manifest));

        var (code, stdout, stderr) = CliProcess.Run("generate", "--model", copy, "--prompt", "the ", "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("blocks.1.mlp.fc.weight", stderr);
        Assert.Contains("NaN", stderr);
        Assert.Equal("", stdout);
    }

    [Fact]
    public void AFileThatDoesNotMatchTheManifestIsRefused()
    {
        var copy = _checkpoint.Copy();
        var weights = Path.Combine(copy, "model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        bytes[^3] ^= 0x40;   // one flipped bit in the last weight
        File.WriteAllBytes(weights, bytes);
        var (code, _, stderr) = CliProcess.Run("generate", "--model", copy, "--prompt", "the ", "--threads", "1");
        Assert.Equal(1, code);
        Assert.Contains("model.safetensors", stderr);
        Assert.Contains("SHA-256", stderr);
    }

    [Fact]
    public void GenerationPastTheContextSaysSoAndStopsThere()
    {
        // gpt2-tiny holds 128 positions: a 4-token prompt leaves room for 124 new tokens.
        var (code, stdout, stderr) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "300", "--threads", "1");
        Assert.True(code == 0, stderr);
        Assert.Contains("room for 124 new tokens, not 300", stderr);
        Assert.Contains("[124 tokens", stderr);
        Assert.Contains("the model's context of 128 positions is full", stderr);
        Assert.StartsWith("the ", stdout);
    }

    [Fact]
    public void StopTextEndsGenerationAndIsNotPrinted()
    {
        // Greedy, so the output is known from a first run; then stop at a piece of it.
        var (code, first, err) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "40", "--temperature", "0", "--threads", "1");
        Assert.True(code == 0, err);
        var generated = first.TrimEnd('\n')["the ".Length..];
        var stop = generated.Substring(10, 3);
        var (code2, second, err2) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "40", "--temperature", "0", "--stop", stop, "--threads", "1");
        Assert.True(code2 == 0, err2);
        Assert.Equal("the " + generated[..generated.IndexOf(stop, StringComparison.Ordinal)] + "\n", second);
        Assert.Contains("stopped at a --stop text", err2);
    }

    /// <summary>`--draft-tokens` prints the greedy text of a run without it and says how many guesses were kept; with
    /// sampling (the default temperature) it runs too, and a seed gives the same text twice; `--draft-model` with the run
    /// itself keeps every guess, and refuses tensor parallelism.</summary>
    [Fact]
    public void SpeculativeGenerationPrintsTheGreedyTextAndCountsTheDrafts()
    {
        string[] greedy = ["generate", "--model", _checkpoint.Run, "--prompt", "the the the ", "--max-tokens", "60", "--temperature", "0", "--threads", "1"];
        var (code, plain, err) = CliProcess.Run(greedy);
        Assert.True(code == 0, err);
        var (code2, speculative, err2) = CliProcess.Run([.. greedy, "--draft-tokens", "4"]);
        Assert.True(code2 == 0, err2);
        Assert.Equal(plain, speculative);
        Assert.Matches(@"\d+ of \d+ draft tokens accepted\]", err2);
        Assert.DoesNotContain("draft tokens", err);

        string[] sampled = ["generate", "--model", _checkpoint.Run, "--prompt", "the the the ", "--max-tokens", "40", "--seed", "5", "--draft-tokens", "4", "--threads", "1"];
        var (code3, first, err3) = CliProcess.Run(sampled);
        Assert.True(code3 == 0, err3);
        Assert.Matches(@"\d+ of \d+ draft tokens accepted\]", err3);
        Assert.Equal(first, CliProcess.Run(sampled).Stdout);

        // The run itself as the draft model: the greedy text again, every guess kept.
        var (code4, drafted, err4) = CliProcess.Run([.. greedy, "--draft-model", _checkpoint.Run]);
        Assert.True(code4 == 0, err4);
        Assert.Equal(plain, drafted);
        var counts = System.Text.RegularExpressions.Regex.Match(err4, @"(\d+) of (\d+) draft tokens accepted");
        Assert.True(counts.Success, err4);
        Assert.Equal(counts.Groups[2].Value, counts.Groups[1].Value);
        Assert.NotEqual("0", counts.Groups[2].Value);
        var (code5, _, err5) = CliProcess.Run([.. greedy, "--draft-model", _checkpoint.Run, "--tp", "2"]);
        Assert.Equal(2, code5);
        Assert.Contains("--draft-model runs on one device", err5);
    }

    /// <summary>
    /// `--quantize int8` loads the run with int8 weights and says so; a seed gives the same text twice; the greedy text of the
    /// trained README model is the float model's (checked by hand, docs/benchmarks.md: a two-step run's near-uniform logits
    /// make no such promise); split over two tensor-parallel thread ranks too, and with the run as its own quantized draft model
    /// (every guess kept); `--quantize fp8` and `--quantize int4` likewise load and say so (int4 over two ranks too). An
    /// unknown scheme is a usage error naming the option.
    /// </summary>
    [Fact]
    public void QuantizedGenerationRunsAndSaysSo()
    {
        string[] args = ["generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "30", "--seed", "3", "--quantize", "int8", "--threads", "1"];
        var (code, first, err) = CliProcess.Run(args);
        Assert.True(code == 0, err);
        Assert.StartsWith("the ", first);
        Assert.Matches(@"\[30 tokens .*; int8 weights, [\d.]+ MiB\]", err);
        Assert.Equal(first, CliProcess.Run(args).Stdout);
        var (code2, _, err2) = CliProcess.Run([.. args, "--tp", "2"]);   // each rank quantizes its slices
        Assert.True(code2 == 0, err2);
        Assert.Matches(@"\[30 tokens .*; int8 weights, [\d.]+ MiB\]", err2);
        // The run as its own draft model, both quantized: the same int8 weights, so greedy keeps every guess.
        var (code5, _, err5) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the the ", "--max-tokens", "30", "--temperature", "0",
            "--quantize", "int8", "--draft-model", _checkpoint.Run, "--threads", "1");
        Assert.True(code5 == 0, err5);
        var counts = System.Text.RegularExpressions.Regex.Match(err5, @"(\d+) of (\d+) draft tokens accepted");
        Assert.True(counts.Success && counts.Groups[1].Value == counts.Groups[2].Value && counts.Groups[2].Value != "0", err5);
        var (code3, _, err3) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--quantize", "int3");
        Assert.Equal(2, code3);
        Assert.Contains("--quantize 'int3': expected none, int8, fp8 or int4", err3);
        // Int4 weights (round to nearest in groups of 128) load, generate and say so, on one device and split over two ranks.
        var (code7, int4Text, err7) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "30", "--seed", "3",
            "--quantize", "int4", "--threads", "1");
        Assert.True(code7 == 0, err7);
        Assert.StartsWith("the ", int4Text);
        Assert.Matches(@"\[30 tokens .*; int4 weights, [\d.]+ MiB\]", err7);
        var (code8, _, err8) = CliProcess.Run([.. args[..^4], "--quantize", "int4", "--threads", "1", "--tp", "2"]);   // each rank quantizes its slices
        Assert.True(code8 == 0, err8);
        Assert.Matches(@"\[30 tokens .*; int4 weights, [\d.]+ MiB\]", err8);
        // FP8 weights (W8A8: the CPU quantizes each product's input rows too) load, generate and say so, and that the CPU runs them as the reference.
        var (code6, fp8Text, err6) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "30", "--seed", "3",
            "--quantize", "fp8", "--threads", "1");
        Assert.True(code6 == 0, err6);
        Assert.StartsWith("the ", fp8Text);
        Assert.Matches(@"\[30 tokens .*; fp8 weights, [\d.]+ MiB \(FP8 on the CPU is the exact reference, not a fast path; --quantize int8 is one there\)\]", err6);
    }

    /// <summary>
    /// `--json-schema FILE` prints one JSON object of the schema alone (no prompt) and says the document ended it; `--json`
    /// prints an object; a file that is not JSON, or a schema outside the subset, is a usage error naming the option.
    /// </summary>
    [Fact]
    public void JsonSchemaPrintsOneDocumentOfTheSchema()
    {
        var schema = _checkpoint.Folder.Run("schema.json");
        File.WriteAllText(schema, """{"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}}, "required": ["ok", "n"]}""");
        var (code, stdout, err) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "60", "--json-schema", schema, "--threads", "1");
        Assert.True(code == 0, err);
        using (var doc = System.Text.Json.JsonDocument.Parse(stdout))
            Assert.True(doc.RootElement.GetProperty("n").TryGetInt64(out _), stdout);
        Assert.Contains("stopped at the end of the JSON document", err);
        var (code2, stdout2, err2) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--max-tokens", "40", "--json", "--temperature", "0", "--threads", "1");
        Assert.True(code2 == 0, err2);
        Assert.True(Tessera.Inference.Constraints.JsonGrammar.AnyObject().Start().Accepts(System.Text.Encoding.UTF8.GetBytes(stdout2.TrimEnd('\n'))), stdout2);
        File.WriteAllText(schema, """{"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}""");
        var (code3, _, err3) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--json-schema", schema);
        Assert.Equal(2, code3);
        Assert.Contains("--json-schema", err3);
        Assert.Contains("'pattern'", err3);
        File.WriteAllText(schema, "{not json");
        var (code4, _, err4) = CliProcess.Run("generate", "--model", _checkpoint.Run, "--prompt", "the ", "--json-schema", schema);
        Assert.Equal(2, code4);
        Assert.Contains("not JSON", err4);
    }
}
