using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>
/// `tessera generate --draft-model` and `tessera serve --draft-model` on a sliding-window model, through the real binary:
/// a random mistral-debug model (byte vocabulary, context 128, window 12, seed 61) exported as a Hugging Face directory,
/// and the same weights without a window as a second directory.
/// </summary>
public sealed class WindowedDraftModelCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-swdraft-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>The served model (window 12) and the draft of its weights without a window, as Hugging Face directories.</summary>
    private (string Served, string Unwindowed) Export()
    {
        var cpu = new CpuBackend(1);
        var config = ModelPresets.Get("mistral-debug") with { VocabSize = 256, MaxSequenceLength = 128, SlidingWindow = 12 };
        var model = new Transformer(config, cpu, DType.F32);
        LayerCheck.Randomize(cpu, model.Parameters, new Random(61));
        string served = Path.Combine(_dir, "served"), unwindowed = Path.Combine(_dir, "unwindowed");
        HuggingFaceExport.Write(served, model);
        var plain = new Transformer(config with { SlidingWindow = 0 }, cpu, DType.F32);
        LayerCheck.Randomize(cpu, plain.Parameters, new Random(61));
        HuggingFaceExport.Write(unwindowed, plain);
        return (served, unwindowed);
    }

    /// <summary>
    /// generate: a 30-byte prompt and 60 greedy tokens (far past the window), in the cache bounded by the window, print the
    /// same text with the served model as its own draft (every guess kept) and with its unwindowed twin as the draft (the
    /// blocks kept for it), as without speculation.
    /// </summary>
    [Fact]
    public void GenerateWithADraftModelOverAWindowedModelPrintsTheGreedyText()
    {
        var (served, unwindowed) = Export();
        string[] greedy = ["generate", "--model", served, "--tokenizer", "byte", "--prompt", "the quick brown fox jumps over", "--max-tokens", "60",
            "--temperature", "0", "--threads", "1"];
        var (code, plain, err) = CliProcess.Run(greedy);
        Assert.True(code == 0, err);
        foreach (var (draft, allKept) in new[] { (served, true), (unwindowed, false) })
        {
            var (code2, drafted, err2) = CliProcess.Run([.. greedy, "--draft-model", draft]);
            Assert.True(code2 == 0, err2);
            Assert.Equal(plain, drafted);
            var counts = Regex.Match(err2, @"(\d+) of (\d+) draft tokens accepted");
            TestContext.Current.SendDiagnosticMessage($"{Path.GetFileName(draft)}: {counts.Value}");
            Assert.True(counts.Success, err2);
            Assert.NotEqual("0", counts.Groups[2].Value);
            if (allKept) Assert.Equal(counts.Groups[2].Value, counts.Groups[1].Value);
        }
    }

    /// <summary>
    /// serve: with KV memory for 4 blocks of 16 positions, the served model drafting for itself runs (a sequence holds at
    /// most 3 blocks under the window), says so in its banner, answers a 40-token completion with every guess kept; the
    /// unwindowed draft would keep all 8 blocks of a sequence, and serve refuses it as a usage error naming the draft model's
    /// sliding_window.
    /// </summary>
    [Fact]
    public async Task ServeWithADraftModelOverAWindowedModelAnswersAndRefusesWhatTheMemoryCannotHold()
    {
        var (served, unwindowed) = Export();
        string[] Args(string draft) => ["serve", "--model", served, "--tokenizer", "byte", "--port", "0", "--threads", "1", "--served-model-name", "sw",
            "--max-batch", "4", "--token-budget", "16", "--block-size", "16", "--kv-memory", "0.0000153", "--draft-model", draft];
        var (code, _, stderr) = CliProcess.Run(Args(unwindowed));
        Assert.Equal(2, code);
        Assert.Contains("--draft-model", stderr);
        Assert.Contains("the draft model has no sliding_window", stderr);

        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (string.IsNullOrEmpty(host) || !File.Exists(host)) host = "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "tessera.dll") }.Concat(Args(served))) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var errors = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        try
        {
            string? line;
            Uri? address = null;
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (address is null && DateTime.UtcNow < deadline && (line = await process.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken)) is not null)
                if (Regex.Match(line, @"at (http://\S+)") is { Success: true } m) address = new Uri(m.Groups[1].Value);
            Assert.True(address is not null, "serve printed no address: " + (process.HasExited ? await errors : ""));
            var banner = new List<string>();
            while ((line = await process.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken)) is not null && !line.Contains("Ctrl-C")) banner.Add(line);
            Assert.Contains(banner, l => l.Contains("sliding window of 12: blocks left of it (and the draft model's of 12) go back to the pool, a sequence holds at most 3 blocks"));

            using var http = new HttpClient { BaseAddress = address };
            var response = await http.PostAsync("v1/completions", new StringContent(
                """{"model": "sw", "prompt": "the quick brown fox jumps over", "max_tokens": 40, "temperature": 0}""",
                System.Text.Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
            var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).RootElement;
            Assert.True(response.IsSuccessStatusCode, body.ToString());
            Assert.Equal(40, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            var metrics = await http.GetStringAsync("metrics", TestContext.Current.CancellationToken);
            double Sample(string name) => double.Parse(metrics.Split('\n').Single(l => l.StartsWith(name + " ", StringComparison.Ordinal))[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            double drafts = Sample("tessera_spec_decode_draft_tokens_total"), accepted = Sample("tessera_spec_decode_accepted_tokens_total");
            TestContext.Current.SendDiagnosticMessage($"serve: {accepted} of {drafts} drafts accepted");
            Assert.True(drafts > 0, "the draft model guessed nothing");
            Assert.Equal(drafts, accepted);                              // the served model's own weights: always right
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync(TestContext.Current.CancellationToken);
        }
    }
}
