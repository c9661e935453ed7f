using Tessera.Models;
using Xunit;

namespace Tessera.Tests.Cli;

public sealed class InfoCommandTests
{
    [Fact]
    public void InfoListsEveryPresetWithItsParameterCountAsAMarkdownTable()
    {
        var (code, stdout, stderr) = CliProcess.Run("info");
        Assert.True(code == 0, stderr);
        var rows = stdout.Split('\n').Where(l => l.StartsWith("| ", StringComparison.Ordinal))
            .Select(l => l.Trim().Trim('|').Split('|').Select(c => c.Trim()).ToArray()).ToList();
        var header = rows[0];
        Assert.Equal("preset", header[0]);
        var byName = rows.Skip(2).ToDictionary(r => r[0]);   // after the header and the alignment row
        Assert.Equal(ModelPresets.Names.Order(), byName.Keys.Order());
        int parameters = Array.IndexOf(header, "parameters");
        Assert.Equal("0.84M", byName["gpt2-tiny"][parameters]);     // 842,496, as the training run prints
        Assert.Equal("124.48M", byName["gpt2-124m"][parameters]);   // GPT-2 small with tied embeddings
        Assert.Equal("qwen2", byName["qwen2-debug"][Array.IndexOf(header, "family")]);
    }
}
