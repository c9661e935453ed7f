using System.Net;
using System.Text;
using System.Text.RegularExpressions;
using Tessera.Tests.Models.Adapters;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>
/// `tessera serve --enable-lora-loading --max-loras N --max-lora-rank R` through the binary: the base alone at start, an adapter
/// loaded over HTTP is listed; slot options that cannot hold the --lora adapters, or that size nothing, are usage errors.
/// </summary>
public sealed class LoraLoadingCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-lora-loading-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>--max-loras or --max-lora-rank without adapters or loading, too few slots, too small a rank, loading with --tp: exit 2.</summary>
    [Fact]
    public void SlotOptionsThatCannotHoldTheAdaptersAreUsageErrors()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", ["q", "v"], 681);
        void Refused(string message, params string[] args)
        {
            var (code, stdout, stderr) = CliProcess.Run(["serve", "--model", c.Base, "--threads", "1", "--port", "0", "--served-model-name", "tiny", .. args]);
            Assert.True(code == 2, $"exit {code}\n{stdout}{stderr}");
            Assert.Contains(message, stderr);
            Assert.DoesNotContain("serving", stdout);
        }
        Refused("give --lora NAME=DIR or --enable-lora-loading", "--max-loras", "2");
        Refused("--max-loras 1: 2 adapters are given with --lora", "--lora", "a=" + c.Adapter, "--lora", "b=" + c.Adapter, "--max-loras", "1");
        Refused("--max-lora-rank 2: --lora a=", "--lora", "a=" + c.Adapter, "--max-lora-rank", "2");
    }

    /// <summary>
    /// serve --enable-lora-loading starts with the base alone (on one device and over 2 tensor-parallel thread ranks), says its
    /// slots, and serves an adapter loaded over HTTP: listed, and a completion by its name answers.
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData(1)]
    [InlineData(2)]
    public async Task ServeLoadsAnAdapterOverHttp(int tp)
    {
        var c = AdapterCase.Write(_dir, "gpt2-debug", ["c_attn"], 691);
        using var serve = CliProcess.Start("serve", "--model", c.Base, "--threads", "1", "--port", "0", "--served-model-name", "tiny", "--enable-lora-loading", "--max-loras", "2",
            "--tp", tp.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var address = new Uri(Regex.Match(serve.WaitForLine(l => l.Contains(" at http://")), @"at (http://\S+)").Groups[1].Value);
        serve.WaitForLine(l => l.Contains("Ctrl-C"));
        Assert.Contains("LoRA slots: 2 of rank up to 16", serve.Stdout);
        using var http = new HttpClient { BaseAddress = address };
        var body = System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string> { ["lora_name"] = "sql", ["lora_path"] = c.Adapter });
        using var response = await http.PostAsync("v1/load_lora_adapter", new StringContent(body, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var models = System.Text.Json.JsonDocument.Parse(await http.GetStringAsync("v1/models", TestContext.Current.CancellationToken)).RootElement;
        Assert.Equal(["tiny", "sql"], models.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()!).ToArray());
        var completion = System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object> { ["model"] = "sql", ["prompt"] = "hello", ["max_tokens"] = 4 });
        using var answer = await http.PostAsync("v1/completions", new StringContent(completion, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
        Assert.True(answer.StatusCode == HttpStatusCode.OK, await answer.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }
}
