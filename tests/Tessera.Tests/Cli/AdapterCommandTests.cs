using System.ClientModel;
using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using OpenAI;
using OpenAI.Chat;
using Tessera.Tests.Models.Adapters;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>
/// `tessera serve --adapter DIR` and `tessera generate --adapter DIR` through the binary: a base Hugging Face directory with a PEFT
/// adapter serves and generates what the directory `tessera export` writes does (greedy, so the same weights must give the same
/// text: the merged weights are equal bit for bit, <see cref="LoraWeightMergeTests"/>), the startup line names the adapter, and a
/// bad adapter is a usage error (exit 2) naming the option and the problem before any model is loaded.
/// </summary>
public sealed class AdapterCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-adapter-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Serves <paramref name="args"/>; returns the startup lines and the greedy answer of the OpenAI .NET SDK's chat client.</summary>
    private static async Task<(List<string> Banner, string Answer)> ServeAndAsk(params string[] args)
    {
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (string.IsNullOrEmpty(host) || !File.Exists(host)) host = "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "tessera.dll"), "serve", "--port", "0", "--threads", "1", "--served-model-name", "tiny",
            "--max-batch", "2", "--token-budget", "64" }.Concat(args))
            psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var errors = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        try
        {
            var banner = new List<string>();
            Uri? address = null;
            string? line;
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (DateTime.UtcNow < deadline && (line = await process.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken)) is not null)
            {
                banner.Add(line);
                if (Regex.Match(line, @"at (http://\S+)") is { Success: true } m) address = new Uri(m.Groups[1].Value);
                if (line.Contains("Ctrl-C")) break;
            }
            Assert.True(address is not null, "serve printed no address: " + string.Join("\n", banner) + (process.HasExited ? await errors : ""));
            var sdk = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(address, "v1") }).GetChatClient("tiny");
            ChatCompletion answer = await sdk.CompleteChatAsync([new UserChatMessage("Name a colour")],
                new ChatCompletionOptions { MaxOutputTokenCount = 10, Temperature = 0 }, TestContext.Current.CancellationToken);
            Assert.Equal(10, answer.Usage.OutputTokenCount);
            return (banner, string.Concat(answer.Content.Select(p => p.Text)));
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync(TestContext.Current.CancellationToken);
        }
    }

    /// <summary>
    /// serve --model BASE --adapter DIR answers a greedy chat completion with the text of serving the exported merge, on one
    /// device and on two tensor-parallel thread ranks (each rank merges before it slices); the banner names the adapter.
    /// </summary>
    [Theory(Timeout = 180_000)]
    [InlineData(1)]
    [InlineData(2)]
    public async Task ServingTheBaseWithTheAdapterAnswersAsTheExportedMergeDoes(int tp)
    {
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 401 + tp);
        string merged = c.Export(Path.Combine(_dir, "merged"));
        string ranks = tp.ToString(CultureInfo.InvariantCulture);
        var (banner, answer) = await ServeAndAsk("--model", c.Base, "--adapter", c.Adapter, "--tp", ranks);
        var (exportedBanner, expected) = await ServeAndAsk("--model", merged, "--tp", ranks);
        Assert.Equal(expected, answer);
        Assert.Contains(banner, l => l.Contains($"LoRA adapter {c.Adapter} (r = 4, alpha = 8, {5 * c.Config.Layers} layers) merged into the weights"));
        Assert.DoesNotContain(exportedBanner, l => l.Contains("LoRA adapter"));
        if (tp > 1) Assert.Contains(banner, l => l.Contains("split over 2 tensor-parallel ranks"));
    }

    /// <summary>generate --adapter prints, greedily, the exported merge's continuation, and says on standard error what it merged.</summary>
    [Fact]
    public void GeneratingWithTheAdapterContinuesAsTheExportedMergeDoes()
    {
        var c = AdapterCase.Write(_dir, "gpt2-debug", AdapterCase.AllTargets("gpt2-debug"), 411);
        string merged = c.Export(Path.Combine(_dir, "merged"));
        string[] greedy = ["--prompt", "The colour is", "--max-tokens", "12", "--temperature", "0", "--threads", "1"];
        var (code, stdout, stderr) = CliProcess.Run(["generate", "--model", c.Base, "--adapter", c.Adapter, .. greedy]);
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains($"merging the LoRA adapter {c.Adapter} (r = 4, alpha = 8, {4 * c.Config.Layers} layers) into {c.Base}", stderr);
        var (code1, expected, stderr1) = CliProcess.Run(["generate", "--model", merged, .. greedy]);
        Assert.True(code1 == 0, expected + stderr1);
        Assert.Equal(expected, stdout);
        var (code2, plain, stderr2) = CliProcess.Run(["generate", "--model", c.Base, .. greedy]);
        Assert.True(code2 == 0, plain + stderr2);
        Assert.NotEqual(plain, stdout);   // the adapter moves every logit by O(1): the greedy text changes (seeds fixed)
    }

    /// <summary>
    /// The base may be a Tessera run (its latest checkpoint, read with the checkpoint's own configuration): generate --model RUN
    /// --adapter DIR prints, greedily, what the export of that checkpoint with the adapter prints.
    /// </summary>
    [Fact]
    public void ARunsCheckpointTakesTheAdapterAsItsExportDoes()
    {
        var data = Path.Combine(_dir, "data");
        Tessera.Training.Data.TokenShard.Write(Path.Combine(data, "train_000.bin"), Enumerable.Range(0, 3000).Select(i => (i * 31) % 256).ToArray());
        var run = Path.Combine(_dir, "run");
        var (code, stdout, stderr) = CliProcess.Run("train", "--model", "gpt2-tiny", "--data", Path.Combine(data, "train_000.bin"), "--out", run, "--seq", "16",
            "--batch", "2", "--steps", "1", "--threads", "1", "--sample-tokens", "0", "--eval-every", "0");
        Assert.True(code == 0, stdout + stderr);
        string checkpoint = Tessera.Training.Checkpoints.TrainedModel.Resolve(run);
        var config = Tessera.Models.HuggingFace.HuggingFaceConfig.Load(Path.Combine(checkpoint, "config.json"));
        var adapter = Path.Combine(_dir, "adapter");
        AdapterCase.WriteAdapter(adapter, config, AdapterCase.AllTargets("gpt2"), 431);
        TestContext.Current.TestOutputHelper?.WriteLine("adapter seed 431");
        var merged = Path.Combine(_dir, "merged");
        (code, stdout, stderr) = CliProcess.Run("export", "--model", checkpoint, "--adapter", adapter, "--out", merged);
        Assert.True(code == 0, stdout + stderr);

        string[] greedy = ["--prompt", "abc", "--max-tokens", "12", "--temperature", "0", "--threads", "1", "--tokenizer", "byte"];
        (code, stdout, stderr) = CliProcess.Run(["generate", "--model", run, "--adapter", adapter, .. greedy]);
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains($"merging the LoRA adapter {adapter} (r = 4, alpha = 8, {4 * config.Layers} layers)", stderr);
        var (code1, expected, stderr1) = CliProcess.Run(["generate", "--model", merged, .. greedy]);
        Assert.True(code1 == 0, expected + stderr1);
        Assert.Equal(expected, stdout);
        var (code2, plain, stderr2) = CliProcess.Run(["generate", "--model", run, .. greedy]);
        Assert.True(code2 == 0, plain + stderr2);
        Assert.NotEqual(plain, stdout);
    }

    /// <summary>
    /// A missing adapter directory or file, a malformed adapter_config.json, target modules the model lacks and an adapter of
    /// another model's shapes are usage errors (exit 2) naming --adapter and what is wrong; serve starts no server.
    /// </summary>
    [Fact]
    public void ABadAdapterIsAUsageErrorNamingTheOptionAndTheProblem()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", ["q", "v"], 421);
        void Refused(string adapter, string message)
        {
            foreach (var command in new[] { "generate", "serve" })
            {
                string[] rest = command == "generate" ? ["--prompt", "x", "--max-tokens", "1"] : ["--port", "0"];
                var (code, stdout, stderr) = CliProcess.Run([command, "--model", c.Base, "--adapter", adapter, "--threads", "1", .. rest]);
                Assert.True(code == 2, $"{command}: exit {code}\n{stdout}{stderr}");
                Assert.Contains("--adapter " + adapter, stderr);
                Assert.Contains(message, stderr);
                Assert.DoesNotContain("serving", stdout);
            }
        }

        Refused(Path.Combine(_dir, "nowhere"), "not a directory");
        var noWeights = Path.Combine(_dir, "no-weights");
        Directory.CreateDirectory(noWeights);
        File.Copy(Path.Combine(c.Adapter, "adapter_config.json"), Path.Combine(noWeights, "adapter_config.json"));
        Refused(noWeights, "adapter_model.safetensors: missing");
        var badJson = Path.Combine(_dir, "bad-json");
        Directory.CreateDirectory(badJson);
        File.WriteAllText(Path.Combine(badJson, "adapter_config.json"), "{ not json");
        File.Copy(Path.Combine(c.Adapter, "adapter_model.safetensors"), Path.Combine(badJson, "adapter_model.safetensors"));
        Refused(badJson, "not valid JSON");
        var gpt2 = Path.Combine(_dir, "gpt2-adapter");
        AdapterCase.WriteAdapter(gpt2, Tessera.Models.ModelPresets.Get("gpt2-debug") with { VocabSize = 256, MaxSequenceLength = 128 }, ["c_attn"], 422);
        Refused(gpt2, "LoRA target 'c_attn' names no layer of a Llama model");
        var wide = Path.Combine(_dir, "wide-adapter");
        AdapterCase.WriteAdapter(wide, c.Config with { Embedding = 64, Heads = 8, KvHeads = 4 }, ["q", "v"], 423);
        Refused(wide, "self_attn.q_proj.lora_A.weight' is (4, 64); the model's adapter blocks.0.attn.qkv.q.lora_A is (4, 32)");
    }
}
