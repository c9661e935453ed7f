using System.Globalization;

namespace Tessera.Cli;

/// <summary>
/// "--name value" and "--flag" options plus positional arguments. Every option a command reads
/// is recorded, so <see cref="ThrowOnUnknown"/> can name options the command does not take.
/// </summary>
public sealed class CommandLineArguments
{
    private readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);
    private readonly HashSet<string> _known = new(StringComparer.Ordinal);

    /// <summary>Parses <paramref name="args"/>; "--" ends option parsing (the rest is <see cref="Rest"/>).</summary>
    public CommandLineArguments(IReadOnlyList<string> args)
    {
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (a == "--") { Rest = args.Skip(i + 1).ToList(); break; }
            if (a.StartsWith("--", StringComparison.Ordinal) && a.Length > 2)
            {
                var name = a[2..];
                string? value = null;
                int eq = name.IndexOf('=');
                if (eq >= 0) { value = name[(eq + 1)..]; name = name[..eq]; }
                else if (i + 1 < args.Count && !args[i + 1].StartsWith("--", StringComparison.Ordinal)) value = args[++i];
                if (_options.ContainsKey(name)) throw new UsageException($"option --{name} is given twice");
                _options[name] = value;
            }
            else Positional.Add(a);
        }
    }

    /// <summary>Arguments that are not options.</summary>
    public List<string> Positional { get; } = [];

    /// <summary>Arguments after "--".</summary>
    public IReadOnlyList<string> Rest { get; } = [];

    /// <summary>Whether a flag or option was given.</summary>
    public bool Flag(string name)
    {
        _known.Add(name);
        if (!_options.TryGetValue(name, out var v)) return false;
        return v is null || v is "true" or "1" or "yes";
    }

    /// <summary>A string option, or <paramref name="fallback"/>.</summary>
    public string? String(string name, string? fallback = null)
    {
        _known.Add(name);
        if (!_options.TryGetValue(name, out var v)) return fallback;
        return v ?? throw new UsageException($"option --{name} needs a value");
    }

    /// <summary>An integer option, or <paramref name="fallback"/>.</summary>
    public int Int(string name, int fallback) => Parse(name, fallback, s => int.Parse(s, CultureInfo.InvariantCulture));

    /// <summary>A floating-point option, or <paramref name="fallback"/>.</summary>
    public double Double(string name, double fallback) => Parse(name, fallback, s => double.Parse(s, CultureInfo.InvariantCulture));

    private T Parse<T>(string name, T fallback, Func<string, T> parse)
    {
        var s = String(name);
        if (s is null) return fallback;
        try { return parse(s); }
        catch (FormatException) { throw new UsageException($"option --{name}: '{s}' is not a valid {typeof(T).Name.ToLowerInvariant()}"); }
        catch (OverflowException) { throw new UsageException($"option --{name}: '{s}' is out of range"); }
    }

    /// <summary>Throws when an option was given that no getter asked for.</summary>
    public void ThrowOnUnknown(string command)
    {
        var unknown = _options.Keys.Where(k => !_known.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new UsageException($"'{command}' does not take {string.Join(", ", unknown.Select(u => "--" + u))}; known options: {string.Join(", ", _known.Order().Select(k => "--" + k))}");
    }
}
