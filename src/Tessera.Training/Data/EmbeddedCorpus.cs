using System.Text;
using System.Text.RegularExpressions;
using System.Xml;

namespace Tessera.Training.Data;

/// <summary>
/// The default training text, available offline on any machine with the .NET SDK: the English
/// summaries of the XML API documentation that the SDK ships beside its reference assemblies
/// (packs/Microsoft.NETCore.App.Ref/*/ref/net*/System.*.xml). Files are read in sorted order, the
/// summaries de-duplicated and then shuffled with a fixed seed, so the corpus is the same on every
/// run with the same SDK and the training and validation splits share one distribution (in file
/// order, long runs of SIMD intrinsic signatures would sit in the middle of the training data).
/// </summary>
public static partial class EmbeddedCorpus
{
    /// <summary>Loads up to <paramref name="maxBytes"/> of text; <paramref name="source"/> says where it came from.</summary>
    /// <exception cref="FileNotFoundException">No SDK documentation was found; the message says where it looked.</exception>
    public static string Load(int maxBytes, out string source)
    {
        var searched = new List<string>();
        foreach (var root in DotnetRoots())
        {
            var packs = Path.Combine(root, "packs", "Microsoft.NETCore.App.Ref");
            searched.Add(packs);
            if (!Directory.Exists(packs)) continue;
            var files = Directory.EnumerateFiles(packs, "System.*.xml", SearchOption.AllDirectories)
                .Where(f => f.Contains(Path.DirectorySeparatorChar + "ref" + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                .OrderBy(f => f, StringComparer.Ordinal)
                .ToList();
            if (files.Count == 0) continue;
            // Prefer the newest framework version present.
            var version = files.Select(f => Path.GetRelativePath(packs, f).Split(Path.DirectorySeparatorChar)[0]).Max(StringComparer.Ordinal)!;
            files = files.Where(f => Path.GetRelativePath(packs, f).StartsWith(version + Path.DirectorySeparatorChar, StringComparison.Ordinal)).ToList();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            var lines = new List<string>();
            foreach (var file in files) AppendSummaries(file, lines, seen);
            if (lines.Count > 0)
            {
                // Fisher-Yates with a seeded System.Random (its seeded sequence is stable across .NET versions).
                var rng = new Random(20240520);
                for (int i = lines.Count - 1; i > 0; i--)
                {
                    int j = rng.Next(i + 1);
                    (lines[i], lines[j]) = (lines[j], lines[i]);
                }
                var text = new StringBuilder();
                foreach (var line in lines)
                {
                    if (text.Length + line.Length + 1 > maxBytes) break;
                    text.Append(line).Append('\n');
                }
                source = $"SDK XML API documentation, Microsoft.NETCore.App.Ref {version} ({files.Count} files, {lines.Count:N0} distinct summaries, shuffled)";
                return text.ToString();
            }
        }
        throw new FileNotFoundException($"no .NET SDK XML documentation found for the embedded corpus; looked in: {string.Join(", ", searched)}. Set DOTNET_ROOT or train on your own shards with --data");
    }

    private static void AppendSummaries(string file, List<string> lines, HashSet<string> seen)
    {
        var settings = new XmlReaderSettings { DtdProcessing = DtdProcessing.Ignore, IgnoreComments = true };
        using var reader = XmlReader.Create(file, settings);
        while (reader.Read())
        {
            if (reader.NodeType != XmlNodeType.Element || reader.Name != "summary") continue;
            string raw = reader.ReadInnerXml();
            string plain = Whitespace().Replace(Tags().Replace(raw, m => CrefName(m.Value)), " ").Trim();
            if (plain.Length < 16 || !seen.Add(plain)) continue;
            lines.Add(plain);
        }
    }

    // <see cref="T:System.String" /> becomes "String"; other tags vanish.
    private static string CrefName(string tag)
    {
        var m = Cref().Match(tag);
        if (!m.Success) return "";
        var name = m.Groups[1].Value;
        int paren = name.IndexOf('(');
        if (paren >= 0) name = name[..paren];
        int dot = name.LastIndexOf('.');
        return dot >= 0 ? name[(dot + 1)..] : name;
    }

    private static IEnumerable<string> DotnetRoots()
    {
        var env = Environment.GetEnvironmentVariable("DOTNET_ROOT");
        if (!string.IsNullOrEmpty(env)) yield return env;
        // The running shared framework lives at <root>/shared/Microsoft.NETCore.App/<version>/.
        var fx = Path.GetDirectoryName(typeof(object).Assembly.Location);
        if (fx is not null)
        {
            var root = Path.GetFullPath(Path.Combine(fx, "..", "..", ".."));
            yield return root;
        }
        yield return "/usr/share/dotnet";
        yield return "/usr/lib/dotnet";
        var home = Environment.GetEnvironmentVariable("HOME");
        if (!string.IsNullOrEmpty(home)) yield return Path.Combine(home, ".dotnet");
    }

    [GeneratedRegex(@"<[^>]+>")] private static partial Regex Tags();
    [GeneratedRegex(@"\s+")] private static partial Regex Whitespace();
    [GeneratedRegex("cref=\"[A-Z]:([^\"]+)\"")] private static partial Regex Cref();
}
