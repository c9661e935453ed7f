using System.CommandLine;
using Spectre.Console;
using Tessera.Cli.Output;
using Tessera.Models;

namespace Tessera.Cli.Commands;

/// <summary>tessera info: the model presets and their shapes, as a table.</summary>
public sealed class InfoCommand : Command
{
    /// <summary>Declares the command.</summary>
    public InfoCommand(Terminal terminal) : base("info", "list the model presets with their shapes")
    {
        SetAction(_ =>
        {
            var table = new Table { Border = terminal.Interactive ? TableBorder.Rounded : TableBorder.Markdown };
            foreach (var (heading, right) in new[] { ("preset", false), ("family", false), ("layers", true), ("width", true), ("heads", true),
                ("kv heads", true), ("hidden", true), ("vocabulary", true), ("context", true), ("parameters", true) })
                table.AddColumn(new TableColumn(heading) { Alignment = right ? Justify.Right : Justify.Left });
            foreach (var name in ModelPresets.Names)
            {
                var c = ModelPresets.Get(name);
                table.AddRow(name, c.ModelType ?? c.Family.ToString().ToLowerInvariant(), $"{c.Layers}", $"{c.Embedding}", $"{c.Heads}", $"{c.EffectiveKvHeads}",
                    c.IsMixtureOfExperts ? $"{c.Experts} x {c.EffectiveExpertHidden}, top {c.ExpertsPerToken}{(c.HasSharedExpert ? $", shared {c.SharedExpertHidden}" : "")}" : $"{c.EffectiveHidden}", $"{c.VocabSize:N0}", $"{c.MaxSequenceLength:N0}", Parameters(c));
            }
            terminal.Write(table);
            return 0;
        });
    }

    // Declared without storage (ZeRO-3's deferred arena): the count comes from the model's own parameter list, not a formula.
    private static string Parameters(TransformerConfig c)
    {
        var cpu = new Tessera.Tensors.Cpu.CpuBackend(1);
        long total = new Transformer(c, cpu, Tessera.Tensors.DType.F32, Tessera.Nn.ArenaStorage.Deferred).Layout.ParameterCount;
        return total >= 1_000_000_000 ? $"{total / 1e9:F2}B" : $"{total / 1e6:F2}M";
    }
}
