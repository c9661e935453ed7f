using System.ClientModel;
using System.Diagnostics;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using System.Text.RegularExpressions;
using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>`tessera serve --model RUN` after `tessera train`, as the README runs it: the checkpoint (gpt2-tiny, byte tokens) is served.</summary>
public sealed class ServeCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-serve-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>The scheduler's step cap reaches the command line: a cap below one token is a usage error (exit 2) that names
    /// the option before any model is opened.</summary>
    [Fact]
    public void ADecodingStepCapBelowOneTokenIsAUsageErrorNamingTheOption()
    {
        var (code, _, stderr) = CliProcess.Run("serve", "--model", Path.Combine(_dir, "no-such-run"), "--decoding-step-tokens", "0");
        Assert.Equal(2, code);
        Assert.Contains("--decoding-step-tokens", stderr);
    }

    /// <summary>Speculation's options are checked on the command line, before any model is opened: the draft count is bounded, and a draft model needs a positive one.</summary>
    [Fact]
    public void DraftOptionsOutOfRangeAreUsageErrorsNamingTheOption()
    {
        var (code, _, stderr) = CliProcess.Run("serve", "--model", Path.Combine(_dir, "no-such-run"), "--draft-tokens", "17");
        Assert.Equal(2, code);
        Assert.Contains("--draft-tokens (17) must be at most 16", stderr);
        (code, _, stderr) = CliProcess.Run("serve", "--model", Path.Combine(_dir, "no-such-run"), "--draft-model", Path.Combine(_dir, "no-such-draft"), "--draft-tokens", "0");
        Assert.Equal(2, code);
        Assert.Contains("--draft-model needs --draft-tokens above 0", stderr);
    }

    /// <summary>--kv-dtype takes model, int8 or fp8; anything else is a usage error (exit 2) naming the option and the value, before
    /// any model is opened.</summary>
    [Fact]
    public void AnUnknownKvDTypeIsAUsageErrorNamingTheOption()
    {
        var (code, _, stderr) = CliProcess.Run("serve", "--model", Path.Combine(_dir, "no-such-run"), "--kv-dtype", "fp4");
        Assert.Equal(2, code);
        Assert.Contains("--kv-dtype 'fp4': expected model (the model's dtype), int8 or fp8", stderr);
    }

    /// <summary>
    /// The run served with speculative decoding, by prompt lookup or with a draft model (the run itself, so every guess is
    /// right), split over two tensor-parallel thread ranks, with int8 or FP8 weights, or with an int8 or FP8 KV cache
    /// (<c>--kv-dtype int8|fp8</c>, the draft model's pool and every rank's too): the banner says which, /metrics counts the
    /// guesses, and the OpenAI .NET SDK's chat client gets an answer.
    /// </summary>
    [Theory]
    [InlineData(false, 1, "none", "model")]
    [InlineData(true, 1, "none", "model")]
    [InlineData(false, 2, "none", "model")]
    [InlineData(false, 1, "int8", "model")]
    [InlineData(false, 2, "int8", "model")]
    [InlineData(false, 1, "none", "int8")]
    [InlineData(true, 2, "none", "int8")]
    [InlineData(false, 1, "fp8", "model")]
    [InlineData(false, 2, "fp8", "model")]
    [InlineData(false, 1, "int4", "model")]
    [InlineData(false, 2, "int4", "model")]
    [InlineData(false, 1, "none", "fp8")]
    [InlineData(true, 2, "none", "fp8")]
    public async Task TrainedRunIsServedOverHttpAndAnswersAChatCompletion(bool draftModel, int tp, string quantize, string kvDType)
    {
        var data = Path.Combine(_dir, "data");
        TokenShard.Write(Path.Combine(data, "train_000.bin"), Enumerable.Range(0, 3000).Select(i => (i * 31) % 256).ToArray());
        var run = Path.Combine(_dir, "run");
        var (code, _, stderr) = CliProcess.Run("train", "--model", "gpt2-tiny", "--data", Path.Combine(data, "train_000.bin"), "--out", run, "--seq", "16",
            "--batch", "2", "--steps", "1", "--threads", "1", "--sample-tokens", "0", "--eval-every", "0");
        Assert.True(code == 0, stderr);

        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (string.IsNullOrEmpty(host) || !File.Exists(host)) host = "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "tessera.dll"), "serve", "--model", run, "--port", "0", "--threads", "1",
            "--served-model-name", "tiny", "--max-batch", "4", "--token-budget", "64", "--draft-tokens", "3", "--tp", tp.ToString(System.Globalization.CultureInfo.InvariantCulture) }
            .Concat(draftModel ? ["--draft-model", run] : []).Concat(quantize != "none" ? ["--quantize", quantize] : []).Concat(kvDType != "model" ? ["--kv-dtype", kvDType] : []))
            psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var errors = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        try
        {
            string? line;
            Uri? address = null;
            var deadline = DateTime.UtcNow.AddSeconds(60);
            string serving = "";
            while (address is null && DateTime.UtcNow < deadline && (line = await process.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken)) is not null)
                if (Regex.Match(line, @"at (http://\S+)") is { Success: true } m) (address, serving) = (new Uri(m.Groups[1].Value), line);
            Assert.True(address is not null, "serve printed no address: " + (process.HasExited ? await errors : ""));
            if (tp > 1) Assert.Contains("split over 2 tensor-parallel ranks", serving);
            if (quantize != "none") Assert.Contains($"{quantize} weights and F32", serving);
            else Assert.DoesNotContain("weights and", serving);
            var banner = new List<string>();
            while ((line = await process.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken)) is not null && !line.Contains("Ctrl-C")) banner.Add(line);
            Assert.Contains(banner, l => l.Contains("speculative decoding: requests verify up to 3 tokens a step guessed " +
                (draftModel ? "by the draft model" : "from their own text")));
            Assert.Equal(kvDType == "int8", banner.Any(l => l.Contains("KV cache: ") && l.Contains("(int8, a scale per position and head)")));
            Assert.Equal(kvDType == "fp8", banner.Any(l => l.Contains("KV cache: ") && l.Contains("(fp8 e4m3, a scale per position and head)")));
            // FP8 on the CPU is the reference, and serve says so (Fp8Support).
            Assert.Equal(quantize == "fp8", banner.Any(l => l.Contains("fp8: FP8 on the CPU is the exact reference")));

            var sdk = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(address, "v1") }).GetChatClient("tiny");
            ChatCompletion answer = await sdk.CompleteChatAsync([new UserChatMessage("Gets the value")],
                new ChatCompletionOptions { MaxOutputTokenCount = 6, Temperature = 0 }, TestContext.Current.CancellationToken);
            Assert.Equal(6, answer.Usage.OutputTokenCount);
            Assert.Equal(ChatFinishReason.Length, answer.FinishReason);

            using var http = new HttpClient { BaseAddress = address };
            var response = await http.PostAsync("v1/chat/completions", new StringContent(
                """{"model": "tiny", "messages": [{"role": "user", "content": "Gets the value"}], "max_tokens": 8, "temperature": 0}""",
                System.Text.Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
            var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).RootElement;
            Assert.True(response.IsSuccessStatusCode, body.ToString());
            Assert.Equal(8, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            Assert.Equal("tiny", JsonDocument.Parse(await http.GetStringAsync("v1/models", TestContext.Current.CancellationToken)).RootElement.GetProperty("data")[0].GetProperty("id").GetString());
            var metrics = await http.GetStringAsync("metrics", TestContext.Current.CancellationToken);
            double Sample(string name) => double.Parse(metrics.Split('\n').Single(l => l.StartsWith(name + " ", StringComparison.Ordinal))[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            double drafts = Sample("tessera_spec_decode_draft_tokens_total"), accepted = Sample("tessera_spec_decode_accepted_tokens_total");
            if (draftModel)
            {
                Assert.True(drafts > 0, "the draft model guessed nothing");
                Assert.Equal(drafts, accepted);                          // the served model's own weights: always right
            }
            else Assert.InRange(accepted, 0, drafts);
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync(TestContext.Current.CancellationToken);
        }
    }
}
