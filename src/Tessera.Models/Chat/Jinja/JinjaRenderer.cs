using System.Globalization;
using System.Text;

namespace Tessera.Models.Chat.Jinja;

/// <summary>
/// Runs a parsed template: statements write text, expressions evaluate with Python's and Jinja's rules (see
/// <see cref="JinjaValues"/>). A for loop's body has a scope of its own per iteration (a set inside it does not leak out;
/// a namespace's attributes do), and the loop variable `loop` (index, index0, first, last, length, revindex, previtem,
/// nextitem). Errors name the position through the error factory the template supplies.
/// </summary>
internal sealed class JinjaRenderer
{
    private readonly List<Dictionary<string, object?>> _scopes = new();
    private readonly Func<int, string, Exception> _error;
    private readonly StringBuilder _out = new();

    public JinjaRenderer(Dictionary<string, object?> globals, Func<int, string, Exception> error)
    {
        _error = error;
        _scopes.Add(globals);
    }

    public string Render(List<Node> nodes)
    {
        Run(nodes);
        return _out.ToString();
    }

    private void Run(List<Node> nodes)
    {
        foreach (var node in nodes)
        {
            switch (node)
            {
                case TextNode text: _out.Append(text.Text); break;
                case OutputNode output: _out.Append(JinjaValues.Text(Evaluate(output.Value))); break;
                case IfNode branch:
                {
                    bool taken = false;
                    foreach (var (condition, body) in branch.Branches)
                        if (JinjaValues.Truthy(Evaluate(condition))) { Run(body); taken = true; break; }
                    if (!taken && branch.Else is not null) Run(branch.Else);
                    break;
                }
                case ForNode loop: For(loop); break;
                case SetNode set:
                {
                    var value = Evaluate(set.Value);
                    if (set.Attribute is null) _scopes[^1][set.Name] = value;
                    else if (Lookup(set.Name) is Namespace ns) ns.Values[set.Attribute] = value;
                    else throw _error(set.Position, $"'{set.Name}' is not a namespace: only namespace(...) objects take attribute assignments");
                    break;
                }
            }
        }
    }

    private void For(ForNode loop)
    {
        var items = Iterate(Evaluate(loop.Iterable), loop.Iterable.Position);
        if (loop.Filter is not null)
        {
            var kept = new List<object?>();
            foreach (var item in items)
            {
                _scopes.Add(new Dictionary<string, object?>());
                Bind(loop, item);
                if (JinjaValues.Truthy(Evaluate(loop.Filter))) kept.Add(item);
                _scopes.RemoveAt(_scopes.Count - 1);
            }
            items = kept;
        }
        if (items.Count == 0) { if (loop.Else is not null) Run(loop.Else); return; }
        for (int i = 0; i < items.Count; i++)
        {
            var scope = new Dictionary<string, object?>
            {
                ["loop"] = new Dictionary<string, object?>
                {
                    ["index"] = (long)(i + 1), ["index0"] = (long)i, ["first"] = i == 0, ["last"] = i == items.Count - 1,
                    ["length"] = (long)items.Count, ["revindex"] = (long)(items.Count - i), ["revindex0"] = (long)(items.Count - i - 1),
                    ["previtem"] = i > 0 ? items[i - 1] : Undefined.Value, ["nextitem"] = i + 1 < items.Count ? items[i + 1] : Undefined.Value,
                },
            };
            _scopes.Add(scope);
            Bind(loop, items[i]);
            Run(loop.Body);
            _scopes.RemoveAt(_scopes.Count - 1);
        }
    }

    private void Bind(ForNode loop, object? item)
    {
        if (loop.Targets.Count == 1) { _scopes[^1][loop.Targets[0]] = item; return; }
        if (item is not List<object?> parts || parts.Count != loop.Targets.Count)
            throw _error(loop.Position, $"cannot unpack {JinjaValues.TypeName(item)} into {loop.Targets.Count} loop variables");
        for (int k = 0; k < parts.Count; k++) _scopes[^1][loop.Targets[k]] = parts[k];
    }

    private List<object?> Iterate(object? value, int position) => value switch
    {
        List<object?> list => list,
        Dictionary<string, object?> map => map.Keys.Select(k => (object?)k).ToList(),
        string s => s.Select(c => (object?)c.ToString()).ToList(),
        Undefined or null => [],
        _ => throw _error(position, $"cannot loop over a {JinjaValues.TypeName(value)}"),
    };

    private object? Lookup(string name)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
            if (_scopes[i].TryGetValue(name, out var value)) return value;
        return Undefined.Value;
    }

    // ---------------------------------------------------------------- expressions

    private object? Evaluate(Expr expr)
    {
        switch (expr)
        {
            case LiteralExpr literal: return literal.Value;
            case NameExpr name: return Lookup(name.Name);
            case AttributeExpr attribute: return Attribute(Evaluate(attribute.Target), attribute.Name, attribute.Position);
            case ItemExpr item: return Item(Evaluate(item.Target), Evaluate(item.Index), item.Position);
            case SliceExpr slice: return Slice(slice);
            case CallExpr call: return Call(call);
            case FilterExpr filter: return Filter(filter);
            case TestExpr test: return Test(test) != test.Negated;
            case UnaryExpr unary:
                var operand = Evaluate(unary.Operand);
                return unary.Operator == "not" ? !JinjaValues.Truthy(operand) : Negate(operand, unary.Position);
            case BinaryExpr binary: return Binary(binary);
            case ConditionalExpr conditional:
                return JinjaValues.Truthy(Evaluate(conditional.Condition)) ? Evaluate(conditional.Then)
                    : conditional.Else is null ? Undefined.Value : Evaluate(conditional.Else);
            case ListExpr list: return list.Items.Select(Evaluate).ToList();
            case DictExpr dict:
                var map = new Dictionary<string, object?>();
                foreach (var (key, value) in dict.Items) map[JinjaValues.Text(Evaluate(key))] = Evaluate(value);
                return map;
            default: throw _error(expr.Position, "unsupported expression");
        }
    }

    private object? Negate(object? v, int position) => v switch
    {
        long l => (object)(-l),
        double d => -d,
        _ => throw _error(position, $"cannot negate a {JinjaValues.TypeName(v)}"),
    };

    private object? Attribute(object? target, string name, int position) => target switch
    {
        Dictionary<string, object?> map => map.TryGetValue(name, out var v) ? v : Undefined.Value,
        Namespace ns => ns.Values.TryGetValue(name, out var v) ? v : Undefined.Value,
        Undefined => throw _error(position, $"'{name}' of an undefined value"),
        _ => Undefined.Value,
    };

    private object? Item(object? target, object? index, int position)
    {
        switch (target)
        {
            case Dictionary<string, object?> map:
                return index is string key && map.TryGetValue(key, out var v) ? v : Undefined.Value;
            case Namespace ns:
                return index is string k && ns.Values.TryGetValue(k, out var nv) ? nv : Undefined.Value;
            case List<object?> list when index is long i:
                if (i < 0) i += list.Count;
                return i >= 0 && i < list.Count ? list[(int)i] : Undefined.Value;
            case string s when index is long j:
                if (j < 0) j += s.Length;
                return j >= 0 && j < s.Length ? s[(int)j].ToString() : Undefined.Value;
            case Undefined:
                throw _error(position, $"index {JinjaValues.Repr(index)} of an undefined value");
            default:
                return Undefined.Value;
        }
    }

    private object? Slice(SliceExpr slice)
    {
        var target = Evaluate(slice.Target);
        long? Bound(Expr? e) => e is null ? null : Evaluate(e) switch { long l => l, null => null, var o => throw _error(e.Position, $"slice bound is a {JinjaValues.TypeName(o)}") };
        long? start = Bound(slice.Start), stop = Bound(slice.Stop), step = Bound(slice.Step);
        int count = target switch { List<object?> l => l.Count, string s => s.Length, _ => throw _error(slice.Position, $"cannot slice a {JinjaValues.TypeName(target)}") };
        var indices = SliceIndices(count, start, stop, step ?? 1, slice.Position);
        return target is string str ? string.Concat(indices.Select(i => str[i])) : indices.Select(i => ((List<object?>)target!)[i]).ToList();
    }

    /// <summary>Python's slice semantics, negative steps included.</summary>
    private List<int> SliceIndices(int count, long? start, long? stop, long step, int position)
    {
        if (step == 0) throw _error(position, "slice step cannot be zero");
        long Clamp(long v, long lo, long hi) => Math.Max(lo, Math.Min(hi, v < 0 ? v + count : v));
        var result = new List<int>();
        if (step > 0)
        {
            long a = start is long s ? Clamp(s, 0, count) : 0, b = stop is long e ? Clamp(e, 0, count) : count;
            for (long i = a; i < b; i += step) result.Add((int)i);
        }
        else
        {
            long a = start is long s ? Clamp(s, -1, count - 1) : count - 1, b = stop is long e ? Clamp(e, -1, count - 1) : -1;
            for (long i = a; i > b; i += step) result.Add((int)i);
        }
        return result;
    }

    private object? Binary(BinaryExpr b)
    {
        if (b.Operator == "and") { var l = Evaluate(b.Left); return JinjaValues.Truthy(l) ? Evaluate(b.Right) : l; }
        if (b.Operator == "or") { var l = Evaluate(b.Left); return JinjaValues.Truthy(l) ? l : Evaluate(b.Right); }
        var left = Evaluate(b.Left);
        var right = Evaluate(b.Right);
        switch (b.Operator)
        {
            case "==": return JinjaValues.Equal(left, right);
            case "!=": return !JinjaValues.Equal(left, right);
            case "~": return JinjaValues.Text(left) + JinjaValues.Text(right);
            case "in":
                return right switch
                {
                    string s when left is string sub => s.Contains(sub, StringComparison.Ordinal),
                    List<object?> list => list.Any(x => JinjaValues.Equal(x, left)),
                    Dictionary<string, object?> map => left is string key && map.ContainsKey(key),
                    Undefined or null => false,
                    _ => throw _error(b.Position, $"'in' needs a string, list or mapping on its right, got {JinjaValues.TypeName(right)}"),
                };
            case "+":
                if (left is string ls && right is string rs) return ls + rs;
                if (left is List<object?> ll && right is List<object?> rl) return ll.Concat(rl).ToList();
                return Arithmetic(b, left, right);
            case "<" or ">" or "<=" or ">=":
                int order = left is string x && right is string y ? string.CompareOrdinal(x, y) : Numbers(b, left, right).A.CompareTo(Numbers(b, left, right).B);
                return b.Operator switch { "<" => order < 0, ">" => order > 0, "<=" => order <= 0, _ => order >= 0 };
            default:
                return Arithmetic(b, left, right);
        }
    }

    private (double A, double B) Numbers(BinaryExpr b, object? left, object? right)
    {
        if (left is not (long or double or bool) || right is not (long or double or bool))
            throw _error(b.Position, $"'{b.Operator}' needs numbers, got {JinjaValues.TypeName(left)} and {JinjaValues.TypeName(right)}");
        return (JinjaValues.ToDouble(left), JinjaValues.ToDouble(right));
    }

    private object? Arithmetic(BinaryExpr b, object? left, object? right)
    {
        if (b.Operator == "*" && left is string s && right is long times) return string.Concat(Enumerable.Repeat(s, (int)Math.Max(0, times)));
        var (x, y) = Numbers(b, left, right);
        bool integers = left is long or bool && right is long or bool;
        switch (b.Operator)
        {
            case "+": return integers ? (object)((long)x + (long)y) : x + y;
            case "-": return integers ? (object)((long)x - (long)y) : x - y;
            case "*": return integers ? (object)((long)x * (long)y) : x * y;
            case "/":
                if (y == 0) throw _error(b.Position, "division by zero");
                return x / y;
            case "//":
                if (y == 0) throw _error(b.Position, "division by zero");
                return integers ? (object)(long)Math.Floor(x / y) : Math.Floor(x / y);
            case "%":
                if (y == 0) throw _error(b.Position, "modulo by zero");
                double m = x - y * Math.Floor(x / y);                  // Python's sign rule
                return integers ? (object)(long)m : m;
            default: throw _error(b.Position, $"unsupported operator '{b.Operator}'");
        }
    }

    // ---------------------------------------------------------------- calls, filters, tests

    private object? Call(CallExpr call)
    {
        var arguments = call.Arguments.Select(Evaluate).ToList();
        var named = call.Named.ToDictionary(n => n.Name, n => Evaluate(n.Value));
        if (call.Callee is AttributeExpr method)
            return JinjaBuiltins.Method(Evaluate(method.Target), method.Name, arguments, named, call.Position, _error);
        var callee = Evaluate(call.Callee);
        if (callee is JinjaFunction function) return function(arguments, named, call.Position);
        throw _error(call.Position, $"{JinjaValues.TypeName(callee)} is not callable");
    }

    private object? Filter(FilterExpr filter)
    {
        var value = Evaluate(filter.Target);
        var arguments = filter.Arguments.Select(Evaluate).ToList();
        return JinjaBuiltins.Filter(value, filter.Name, arguments, filter.Position, _error);
    }

    private bool Test(TestExpr test)
    {
        var value = Evaluate(test.Target);
        var arguments = test.Arguments.Select(Evaluate).ToList();
        return JinjaBuiltins.Test(value, test.Name, arguments);
    }
}
