using System.Text.RegularExpressions;

namespace Tessera.Tests.Cuda;

/// <summary>One kernel's line of an assembler report: its registers and spill stores.</summary>
internal sealed record KernelResources(string Name, int Registers, int SpillStoreBytes);

/// <summary>
/// NVRTC's log of a compilation with <c>--ptxas-options=-v</c>, read: the kernels the assembler reported (in order), and those
/// whose wgmma it serialized, so that each product waits for the one before, with the warning's code and reason (C7515: an
/// instruction other than a wgmma writes an accumulator register inside a pipeline stage; C7513: likewise an input register
/// of a product in flight; C7512: too few registers).
/// </summary>
internal sealed partial record AssemblerReport(List<KernelResources> Kernels, List<string> Serialized, Dictionary<string, string> Why)
{
    public static AssemblerReport Parse(string log)
    {
        var kernels = new List<KernelResources>();
        var serialized = new List<string>();
        var why = new Dictionary<string, string>();
        string? name = null;
        int spill = 0;
        foreach (var line in log.Split('\n'))
        {
            if (Serialization().Match(line) is { Success: true } s)
            {
                serialized.Add(s.Groups[3].Value);
                why[s.Groups[3].Value] = $"{s.Groups[1].Value}: {s.Groups[2].Value}";
            }
            else if (Entry().Match(line) is { Success: true } e) (name, spill) = (e.Groups[1].Value, 0);
            else if (Spills().Match(line) is { Success: true } p) spill = int.Parse(p.Groups[1].Value);
            else if (Registers().Match(line) is { Success: true } r && name is not null)
            {
                kernels.Add(new KernelResources(name, int.Parse(r.Groups[1].Value), spill));
                name = null;
            }
        }
        return new AssemblerReport(kernels, serialized, why);
    }

    /// <summary>A line a person reads: the kernel's registers and spills, and whether its wgmma were serialized.</summary>
    public string Describe(KernelResources k) =>
        $"{k.Name}: {k.Registers} registers, {k.SpillStoreBytes} bytes spill stores{(Why.TryGetValue(k.Name, out var w) ? $", wgmma serialized ({w})" : "")}";

    [GeneratedRegex(@"\((C75\d\d)\) Potential Performance Loss: wgmma\.mma_async instructions are serialized due to (.*?) (?:in|for) the function '([A-Za-z0-9_]+)'")]
    private static partial Regex Serialization();

    [GeneratedRegex(@"Compiling entry function '([A-Za-z0-9_]+)'")]
    private static partial Regex Entry();

    [GeneratedRegex(@"(\d+) bytes spill stores")]
    private static partial Regex Spills();

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex Registers();
}
