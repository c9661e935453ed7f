using Tessera.Models;

namespace Tessera.Cli.Commands;

/// <summary>tessera info: the model presets and their sizes.</summary>
internal static class InfoCommand
{
    public const string Usage = "tessera info\n  Lists the model presets with their shapes.";

    public static int Run(CommandLineArguments args, TextWriter output)
    {
        args.ThrowOnUnknown("info");
        output.WriteLine($"{"preset",-12} {"family",-6} {"layers",6} {"width",6} {"heads",5} {"kv",3} {"hidden",6} {"vocab",7} {"context",7}");
        foreach (var name in ModelPresets.Names)
        {
            var c = ModelPresets.Get(name);
            output.WriteLine($"{name,-12} {c.Family,-6} {c.Layers,6} {c.Embedding,6} {c.Heads,5} {c.EffectiveKvHeads,3} {c.EffectiveHidden,6} {c.VocabSize,7} {c.MaxSequenceLength,7}");
        }
        return 0;
    }
}
