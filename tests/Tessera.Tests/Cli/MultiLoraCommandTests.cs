using System.Text.RegularExpressions;
using Tessera.Tests.Models.Adapters;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>
/// `tessera serve --lora NAME=DIR` through the binary: it serves the base and each adapter under its name, and every misuse is a
/// usage error (exit 2) naming --lora and the problem before any model loads.
/// </summary>
public sealed class MultiLoraCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-multilora-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// A malformed NAME=DIR, a name given twice, the served model's own name, an adapter of another model, --draft-model and
    /// --adapter beside --lora are each refused with exit 2 and a message naming the problem; no server starts.
    /// </summary>
    [Fact]
    public void MisusesOfLoraAreUsageErrors()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", ["q", "v"], 571);
        var gpt2 = Path.Combine(_dir, "gpt2-adapter");
        AdapterCase.WriteAdapter(gpt2, Tessera.Models.ModelPresets.Get("gpt2-debug") with { VocabSize = 256, MaxSequenceLength = 128 }, ["c_attn"], 572);
        void Refused(string message, params string[] args)
        {
            var (code, stdout, stderr) = CliProcess.Run(["serve", "--model", c.Base, "--threads", "1", "--port", "0", "--served-model-name", "tiny", .. args]);
            Assert.True(code == 2, $"exit {code}\n{stdout}{stderr}");
            Assert.Contains("--lora", stderr);
            Assert.Contains(message, stderr);
            Assert.DoesNotContain("serving", stdout);
        }
        string good = "sql=" + c.Adapter;
        Refused("give NAME=DIR", "--lora", c.Adapter);
        Refused("give NAME=DIR", "--lora", "sql=");
        Refused("the name 'sql' is given twice", "--lora", good, "--lora", good);
        Refused("'tiny' is the served model's own name", "--lora", "tiny=" + c.Adapter);
        Refused("LoRA target 'c_attn' names no layer of a Llama model", "--lora", "g=" + gpt2);
        Refused("not a directory", "--lora", "x=" + Path.Combine(_dir, "nowhere"));
        Refused("not supported with served adapters", "--lora", good, "--draft-model", c.Base);
        Refused("serve that adapter as one more --lora NAME=DIR", "--lora", good, "--adapter", c.Adapter);
    }

    /// <summary>serve --lora starts (on one device and over 2 tensor-parallel thread ranks), says what it serves, and lists the base and the adapter in /v1/models.</summary>
    [Theory(Timeout = 120_000)]
    [InlineData(1)]
    [InlineData(2)]
    public async Task ServeListsTheBaseAndEachAdapter(int tp)
    {
        var c = AdapterCase.Write(_dir, "gpt2-debug", ["c_attn"], 581);
        using var serve = CliProcess.Start("serve", "--model", c.Base, "--threads", "1", "--port", "0", "--served-model-name", "tiny", "--lora", "sql=" + c.Adapter,
            "--tp", tp.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var address = new Uri(Regex.Match(serve.WaitForLine(l => l.Contains(" at http://")), @"at (http://\S+)").Groups[1].Value);
        serve.WaitForLine(l => l.Contains("Ctrl-C"));
        Assert.Contains("LoRA adapter 'sql' served unmerged over the base", serve.Stdout);
        using var http = new HttpClient { BaseAddress = address };
        var models = System.Text.Json.JsonDocument.Parse(await http.GetStringAsync("v1/models", TestContext.Current.CancellationToken)).RootElement;
        Assert.Equal(["tiny", "sql"], models.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()!).ToArray());
    }
}
