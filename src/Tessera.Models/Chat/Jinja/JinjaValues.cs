using System.Globalization;
using System.Text;

namespace Tessera.Models.Chat.Jinja;

/// <summary>Jinja's undefined value: falsy, renders as nothing, `is defined` is false.</summary>
internal sealed class Undefined
{
    public static readonly Undefined Value = new();
    private Undefined() { }
}

/// <summary>The mutable object made by namespace(...), whose attributes a loop body may set.</summary>
internal sealed class Namespace(Dictionary<string, object?> values)
{
    public Dictionary<string, object?> Values { get; } = values;
}

/// <summary>A callable global (raise_exception, namespace, range, ...).</summary>
internal delegate object? JinjaFunction(List<object?> arguments, Dictionary<string, object?> named, int position);

/// <summary>
/// Values as Python and Jinja treat them: null is None; integers are long, reals double; lists are List&lt;object?&gt;;
/// mappings are Dictionary&lt;string, object?&gt; (insertion-ordered for the keys chat templates use).
/// </summary>
internal static class JinjaValues
{
    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> list => list.Count > 0,
        Dictionary<string, object?> map => map.Count > 0,
        _ => true,
    };

    /// <summary>The text {{ v }} renders (Python's str()).</summary>
    public static string Text(object? v) => v switch
    {
        Undefined => "",
        string s => s,
        _ => Repr(v, top: true),
    };

    /// <summary>Python's repr for containers and scalars (str for a top-level string).</summary>
    public static string Repr(object? v, bool top = false) => v switch
    {
        null => "None",
        Undefined => "",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FormatDouble(d),
        string s => top ? s : "'" + s.Replace("\\", "\\\\").Replace("'", "\\'").Replace("\n", "\\n") + "'",
        List<object?> list => "[" + string.Join(", ", list.Select(x => Repr(x))) + "]",
        Dictionary<string, object?> map => "{" + string.Join(", ", map.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        Namespace => "<Namespace>",
        _ => v.ToString() ?? "",
    };

    private static string FormatDouble(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        return r.Contains('.') || r.Contains('E') ? r : r + ".0";
    }

    public static bool Equal(object? a, object? b) => (a, b) switch
    {
        (Undefined, Undefined) => true,
        (Undefined, _) or (_, Undefined) => false,
        (null, null) => true,
        (null, _) or (_, null) => false,
        (bool x, bool y) => x == y,
        (long x, long y) => x == y,
        (long or double or bool, long or double or bool) => ToDouble(a) == ToDouble(b),
        (string x, string y) => string.Equals(x, y, StringComparison.Ordinal),
        (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => Equal(p.First, p.Second)),
        (Dictionary<string, object?> x, Dictionary<string, object?> y) => x.Count == y.Count && x.All(kv => y.TryGetValue(kv.Key, out var o) && Equal(kv.Value, o)),
        _ => ReferenceEquals(a, b),
    };

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidOperationException($"{TypeName(v)} is not a number"),
    };

    public static string TypeName(object? v) => v switch
    {
        null => "none",
        Undefined => "undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "string",
        List<object?> => "list",
        Dictionary<string, object?> => "dict",
        _ => v.GetType().Name,
    };

    /// <summary>Python's json.dumps(v, ensure_ascii=False) with its default separators (", " and ": "), or indented.</summary>
    public static string Json(object? v, int? indent = null)
    {
        var sb = new StringBuilder();
        Write(sb, v, indent, 0);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? v, int? indent, int depth)
    {
        switch (v)
        {
            case null or Undefined: sb.Append("null"); break;
            case bool b: sb.Append(b ? "true" : "false"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(FormatDouble(d) switch { "nan" => "NaN", "inf" => "Infinity", "-inf" => "-Infinity", var s => s }); break;
            case string s: WriteString(sb, s); break;
            case List<object?> list:
                WriteContainer(sb, '[', ']', list.Count, indent, depth, (i, d) => Write(sb, list[i], indent, d));
                break;
            case Dictionary<string, object?> map:
            {
                var entries = map.ToList();
                WriteContainer(sb, '{', '}', entries.Count, indent, depth, (i, d) =>
                {
                    WriteString(sb, entries[i].Key);
                    sb.Append(": ");
                    Write(sb, entries[i].Value, indent, d);
                });
                break;
            }
            default: WriteString(sb, Text(v)); break;
        }
    }

    private static void WriteContainer(StringBuilder sb, char open, char close, int count, int? indent, int depth, Action<int, int> item)
    {
        sb.Append(open);
        if (count == 0) { sb.Append(close); return; }
        for (int i = 0; i < count; i++)
        {
            if (indent is int n) sb.Append(i == 0 ? "" : ",").Append('\n').Append(' ', n * (depth + 1));
            else if (i > 0) sb.Append(", ");
            item(i, depth + 1);
        }
        if (indent is int m) sb.Append('\n').Append(' ', m * depth);
        sb.Append(close);
    }

    private static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
