using Tessera.Models;

namespace Tessera.Cli.CommandLine;

/// <summary>Preset lookup for --model, an unknown name being a usage error that lists the presets.</summary>
public static class Presets
{
    public static TransformerConfig Get(string name)
    {
        try { return ModelPresets.Get(name); }
        catch (ArgumentException e) { throw new UsageException($"--model {name}: {e.Message}"); }
    }
}
