using System.Globalization;

namespace Tessera.Models.Chat.Jinja;

/// <summary>The filters, tests and string/mapping methods of the chat-template subset (the names the parser accepts).</summary>
internal static class JinjaBuiltins
{
    public static object? Filter(object? value, string name, List<object?> args, int position, Func<int, string, Exception> error)
    {
        object? Arg(int i, object? fallback = null) => i < args.Count ? args[i] : fallback;
        switch (name)
        {
            case "trim": return JinjaValues.Text(value).Trim();
            case "length" or "count":
                return value switch
                {
                    string s => (long)s.Length,
                    List<object?> l => (long)l.Count,
                    Dictionary<string, object?> m => (long)m.Count,
                    Undefined or null => 0L,
                    _ => throw error(position, $"length of a {JinjaValues.TypeName(value)}"),
                };
            case "tojson": return JinjaValues.Json(value, Arg(0) is long indent ? (int)indent : null);
            case "upper": return JinjaValues.Text(value).ToUpperInvariant();
            case "lower": return JinjaValues.Text(value).ToLowerInvariant();
            case "capitalize": { var s = JinjaValues.Text(value); return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(); }
            case "title": return CultureInfo.InvariantCulture.TextInfo.ToTitleCase(JinjaValues.Text(value).ToLowerInvariant());
            case "default" or "d":
                bool boolean = JinjaValues.Truthy(Arg(1, false));
                return value is Undefined || (boolean && !JinjaValues.Truthy(value)) ? Arg(0, "") : value;
            case "join":
                return string.Join(JinjaValues.Text(Arg(0, "")), Sequence(value, position, error).Select(JinjaValues.Text));
            case "string": return JinjaValues.Text(value);
            case "first": { var l = Sequence(value, position, error); return l.Count > 0 ? l[0] : Undefined.Value; }
            case "last": { var l = Sequence(value, position, error); return l.Count > 0 ? l[^1] : Undefined.Value; }
            case "list": return Sequence(value, position, error);
            case "reverse": { var l = Sequence(value, position, error).ToList(); l.Reverse(); return value is string ? string.Concat(l.Select(JinjaValues.Text)) : l; }
            case "unique": return Sequence(value, position, error).Aggregate(new List<object?>(), (acc, x) => { if (!acc.Any(y => JinjaValues.Equal(x, y))) acc.Add(x); return acc; });
            case "items":
                return value is Dictionary<string, object?> map ? map.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()
                    : throw error(position, $"items of a {JinjaValues.TypeName(value)}");
            case "dictsort":
                return value is Dictionary<string, object?> dict ? dict.OrderBy(kv => kv.Key, StringComparer.OrdinalIgnoreCase).Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()
                    : throw error(position, $"dictsort of a {JinjaValues.TypeName(value)}");
            case "safe": return value;
            case "int":
                return value switch
                {
                    long l => l, double d => (long)Math.Truncate(d), bool b => b ? 1L : 0L,
                    string s when long.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var p) => p,
                    _ => Arg(0, 0L),
                };
            case "float":
                return value switch
                {
                    long l => (double)l, double d => d,
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var p) => p,
                    _ => Arg(0, 0.0),
                };
            case "abs": return value is long li ? (object)Math.Abs(li) : Math.Abs(JinjaValues.ToDouble(value));
            case "round":
                int digits = Arg(0) is long p2 ? (int)p2 : 0;
                return Math.Round(JinjaValues.ToDouble(value), digits, MidpointRounding.ToEven);
            case "replace":
                return JinjaValues.Text(value).Replace(JinjaValues.Text(Arg(0, "")), JinjaValues.Text(Arg(1, "")), StringComparison.Ordinal);
            case "indent":
            {
                int width = Arg(0) is long w ? (int)w : 4;
                bool first = JinjaValues.Truthy(Arg(1, false));
                var lines = JinjaValues.Text(value).Split('\n');
                var pad = new string(' ', width);
                return string.Join("\n", lines.Select((l, i) => (i == 0 && !first) || l.Length == 0 ? l : pad + l));
            }
            default: throw error(position, $"the filter '{name}' is not supported");
        }
    }

    public static bool Test(object? value, string name, List<object?> args) => name switch
    {
        "defined" => value is not Undefined,
        "undefined" => value is Undefined,
        "none" => value is null,
        "string" => value is string,
        "mapping" => value is Dictionary<string, object?> or Namespace,
        "iterable" => value is string or List<object?> or Dictionary<string, object?>,
        "sequence" => value is string or List<object?> or Dictionary<string, object?>,
        "number" => value is long or double,
        "integer" => value is long,
        "float" => value is double,
        "true" => value is true,
        "false" => value is false,
        "boolean" => value is bool,
        "equalto" or "eq" => args.Count > 0 && JinjaValues.Equal(value, args[0]),
        "ne" => args.Count > 0 && !JinjaValues.Equal(value, args[0]),
        "in" => args.Count > 0 && args[0] switch
        {
            List<object?> l => l.Any(x => JinjaValues.Equal(x, value)),
            string s => value is string sub && s.Contains(sub, StringComparison.Ordinal),
            Dictionary<string, object?> m => value is string k && m.ContainsKey(k),
            _ => false,
        },
        "odd" => value is long o && o % 2 != 0,
        "even" => value is long e && e % 2 == 0,
        "callable" => value is JinjaFunction,
        "lower" => value is string lo && lo == lo.ToLowerInvariant(),
        "upper" => value is string up && up == up.ToUpperInvariant(),
        _ => false,
    };

    public static object? Method(object? target, string name, List<object?> args, Dictionary<string, object?> named, int position, Func<int, string, Exception> error)
    {
        object? Arg(int i, string key, object? fallback = null) => i < args.Count ? args[i] : named.TryGetValue(key, out var v) ? v : fallback;
        if (target is string s)
        {
            char[]? Chars() => Arg(0, "chars") is string c ? c.ToCharArray() : null;
            switch (name)
            {
                case "strip": return Chars() is { } c1 ? s.Trim(c1) : s.Trim();
                case "lstrip": return Chars() is { } c2 ? s.TrimStart(c2) : s.TrimStart();
                case "rstrip": return Chars() is { } c3 ? s.TrimEnd(c3) : s.TrimEnd();
                case "startswith": return Affixes(Arg(0, "prefix")).Any(p => s.StartsWith(p, StringComparison.Ordinal));
                case "endswith": return Affixes(Arg(0, "suffix")).Any(p => s.EndsWith(p, StringComparison.Ordinal));
                case "upper": return s.ToUpperInvariant();
                case "lower": return s.ToLowerInvariant();
                case "title": return CultureInfo.InvariantCulture.TextInfo.ToTitleCase(s.ToLowerInvariant());
                case "capitalize": return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();
                case "replace":
                {
                    string old = JinjaValues.Text(Arg(0, "old")), replacement = JinjaValues.Text(Arg(1, "new"));
                    return old.Length == 0 ? s : s.Replace(old, replacement, StringComparison.Ordinal);
                }
                case "split":
                {
                    var separator = Arg(0, "sep");
                    long max = Arg(1, "maxsplit") is long m ? m : -1;
                    if (separator is string sep && sep.Length > 0)
                        return (max < 0 ? s.Split(sep) : s.Split(sep, (int)max + 1)).Select(p => (object?)p).ToList();
                    return s.Split((char[]?)null, max < 0 ? int.MaxValue : (int)max + 1, StringSplitOptions.RemoveEmptyEntries).Select(p => (object?)p).ToList();
                }
                case "count": return (long)CountOf(s, JinjaValues.Text(Arg(0, "sub")));
                case "find": return (long)s.IndexOf(JinjaValues.Text(Arg(0, "sub")), StringComparison.Ordinal);
                case "index":
                {
                    int at = s.IndexOf(JinjaValues.Text(Arg(0, "sub")), StringComparison.Ordinal);
                    return at >= 0 ? (long)at : throw error(position, "substring not found");
                }
                case "join": return string.Join(s, Sequence(Arg(0, "iterable"), position, error).Select(JinjaValues.Text));
                case "format":
                {
                    int next = 0;
                    return System.Text.RegularExpressions.Regex.Replace(s, @"\{(\d*)\}", m =>
                        JinjaValues.Text(m.Groups[1].Value.Length > 0 ? args[int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)] : args[next++]));
                }
            }
        }
        else if (target is Dictionary<string, object?> map)
        {
            switch (name)
            {
                case "items": return map.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList();
                case "keys": return map.Keys.Select(k => (object?)k).ToList();
                case "values": return map.Values.ToList();
                case "get": return Arg(0, "key") is string key && map.TryGetValue(key, out var v) ? v : Arg(1, "default");
            }
        }
        else if (target is List<object?> list)
        {
            switch (name)
            {
                case "append": list.Add(Arg(0, "item")); return null;
                case "count": return (long)list.Count(x => JinjaValues.Equal(x, Arg(0, "x")));
                case "index":
                {
                    int at = list.FindIndex(x => JinjaValues.Equal(x, Arg(0, "x")));
                    return at >= 0 ? (long)at : throw error(position, "value not in list");
                }
            }
        }
        throw error(position, $"{JinjaValues.TypeName(target)} has no method '{name}'");
    }

    private static IEnumerable<string> Affixes(object? value) => value switch
    {
        string s => [s],
        List<object?> l => l.Select(JinjaValues.Text),
        _ => [],
    };

    private static int CountOf(string s, string sub)
    {
        if (sub.Length == 0) return s.Length + 1;
        int count = 0;
        for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal)) count++;
        return count;
    }

    public static List<object?> Sequence(object? value, int position, Func<int, string, Exception> error) => value switch
    {
        List<object?> l => l,
        string s => s.Select(c => (object?)c.ToString()).ToList(),
        Dictionary<string, object?> m => m.Keys.Select(k => (object?)k).ToList(),
        Undefined or null => [],
        _ => throw error(position, $"{JinjaValues.TypeName(value)} is not a sequence"),
    };
}
