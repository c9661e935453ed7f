namespace Tessera.Models.Chat.Jinja;

/// <summary>
/// Parses the Jinja subset of chat templates into a tree, refusing at once (with the position) any statement, filter,
/// test, function or method outside it, so that a template that cannot run is reported when it is loaded, not when a
/// request renders it. Precedence follows Jinja: or, and, not, comparisons (==, !=, &lt;, &gt;, in, is), + and -, ~, * / // %,
/// unary minus, then postfix access, calls and filters.
/// </summary>
internal sealed class JinjaParser
{
    public static readonly HashSet<string> Filters = ["trim", "length", "count", "tojson", "upper", "lower", "capitalize", "title", "default", "d",
        "join", "string", "first", "last", "list", "items", "safe", "int", "float", "abs", "replace", "reverse", "indent", "round", "unique", "dictsort"];
    public static readonly HashSet<string> Tests = ["defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number",
        "integer", "float", "true", "false", "boolean", "equalto", "eq", "ne", "in", "odd", "even", "callable", "lower", "upper"];
    public static readonly HashSet<string> Functions = ["raise_exception", "namespace", "range", "strftime_now", "dict", "len"];
    public static readonly HashSet<string> Methods = ["strip", "lstrip", "rstrip", "startswith", "endswith", "split", "upper", "lower", "title",
        "capitalize", "replace", "items", "keys", "values", "get", "format", "join", "count", "find", "index", "append"];

    private readonly Func<int, string, Exception> _error;
    private List<Token> _tokens = [];
    private int _at;

    private JinjaParser(Func<int, string, Exception> error) => _error = error;

    public static List<Node> Parse(string source, Func<int, string, Exception> error)
    {
        var parser = new JinjaParser(error);
        var segments = JinjaLexer.Segments(source, error);
        int index = 0;
        var body = parser.Block(segments, ref index, [], out var end);
        if (end is not null) throw error(end.Value.Position, $"'{end.Value.Content.Trim()}' has no block to end");
        return body;
    }

    /// <summary>Nodes until a statement whose keyword is in <paramref name="terminators"/> (returned in <paramref name="end"/>).</summary>
    private List<Node> Block(List<Segment> segments, ref int index, HashSet<string> terminators, out Segment? end)
    {
        var nodes = new List<Node>();
        end = null;
        while (index < segments.Count)
        {
            var segment = segments[index++];
            switch (segment.Kind)
            {
                case SegmentKind.Text:
                    nodes.Add(new TextNode(segment.Content, segment.Position));
                    break;
                case SegmentKind.Output:
                    Begin(segment);
                    var value = Expression();
                    Expect(TokenKind.End, "the end of {{ }}");
                    nodes.Add(new OutputNode(value, segment.Position));
                    break;
                default:
                    Begin(segment);
                    var keyword = Peek();
                    if (keyword.Kind != TokenKind.Name) throw _error(keyword.Position, "a statement must start with a keyword");
                    if (terminators.Contains(keyword.Text)) { end = segment; return nodes; }
                    nodes.Add(Statement(segments, ref index, segment));
                    break;
            }
        }
        if (terminators.Count > 0) throw _error(segments.Count > 0 ? segments[^1].Position : 0, $"the template ends inside a block; expected {string.Join(" or ", terminators.Select(t => "{% " + t + " %}"))}");
        return nodes;
    }

    private Node Statement(List<Segment> segments, ref int index, Segment segment)
    {
        var keyword = Next();
        switch (keyword.Text)
        {
            case "if":
            {
                var branches = new List<(Expr, List<Node>)>();
                var condition = Expression();
                Expect(TokenKind.End, "the end of {% if %}");
                List<Node>? otherwise = null;
                while (true)
                {
                    var body = Block(segments, ref index, ["elif", "else", "endif"], out var end);
                    branches.Add((condition, body));
                    Begin(end!.Value);
                    var word = Next().Text;
                    if (word == "elif") { condition = Expression(); Expect(TokenKind.End, "the end of {% elif %}"); continue; }
                    Expect(TokenKind.End, $"the end of {{% {word} %}}");
                    if (word == "else")
                    {
                        otherwise = Block(segments, ref index, ["endif"], out end);
                        Begin(end!.Value); Next(); Expect(TokenKind.End, "the end of {% endif %}");
                    }
                    return new IfNode(branches, otherwise, keyword.Position);
                }
            }
            case "for":
            {
                var targets = new List<string> { ExpectName() };
                while (Accept(",")) targets.Add(ExpectName());
                if (!Accept("in")) throw _error(Peek().Position, "expected 'in' in {% for %}");
                var iterable = Expression(allowConditional: false);
                Expr? filter = Accept("if") ? Expression() : null;
                if (Peek().Is("recursive")) throw _error(Peek().Position, "recursive loops are not supported");
                Expect(TokenKind.End, "the end of {% for %}");
                var body = Block(segments, ref index, ["else", "endfor"], out var end);
                Begin(end!.Value);
                List<Node>? otherwise = null;
                if (Next().Text == "else")
                {
                    Expect(TokenKind.End, "the end of {% else %}");
                    otherwise = Block(segments, ref index, ["endfor"], out end);
                    Begin(end!.Value); Next();
                }
                Expect(TokenKind.End, "the end of {% endfor %}");
                return new ForNode(targets, iterable, filter, body, otherwise, keyword.Position);
            }
            case "set":
            {
                string name = ExpectName();
                string? attribute = Accept(".") ? ExpectName() : null;
                if (!Accept("=")) throw _error(Peek().Position, "block assignments ({% set x %}...{% endset %}) are not supported; use {% set x = ... %}");
                var value = Expression();
                Expect(TokenKind.End, "the end of {% set %}");
                return new SetNode(name, attribute, value, keyword.Position);
            }
            default:
                throw _error(keyword.Position, $"the statement '{keyword.Text}' is not supported (supported: if/elif/else, for, set)");
        }
    }

    // ---------------------------------------------------------------- expressions

    private Expr Expression(bool allowConditional = true)
    {
        var value = Or();
        if (allowConditional && Peek().Is("if"))
        {
            int at = Next().Position;
            var condition = Or();
            Expr? otherwise = Accept("else") ? Expression() : null;
            return new ConditionalExpr(value, condition, otherwise, at);
        }
        return value;
    }

    private Expr Or()
    {
        var left = And();
        while (Peek().Is("or")) { int at = Next().Position; left = new BinaryExpr("or", left, And(), at); }
        return left;
    }

    private Expr And()
    {
        var left = Not();
        while (Peek().Is("and")) { int at = Next().Position; left = new BinaryExpr("and", left, Not(), at); }
        return left;
    }

    private Expr Not()
    {
        if (Peek().Is("not")) { int at = Next().Position; return new UnaryExpr("not", Not(), at); }
        return Compare();
    }

    private Expr Compare()
    {
        var left = Additive();
        while (true)
        {
            var t = Peek();
            if (t.Kind == TokenKind.Operator && t.Text is "==" or "!=" or "<" or ">" or "<=" or ">=")
            {
                Next();
                left = new BinaryExpr(t.Text, left, Additive(), t.Position);
            }
            else if (t.Is("in")) { Next(); left = new BinaryExpr("in", left, Additive(), t.Position); }
            else if (t.Is("not") && PeekAt(1).Is("in")) { Next(); Next(); left = new UnaryExpr("not", new BinaryExpr("in", left, Additive(), t.Position), t.Position); }
            else if (t.Is("is"))
            {
                Next();
                bool negated = Accept("not");
                var name = Peek();
                string test = name.Kind == TokenKind.Name ? Next().Text : throw _error(name.Position, "expected a test name after 'is'");
                if (!Tests.Contains(test)) throw _error(name.Position, $"the test '{test}' is not supported");
                var arguments = new List<Expr>();
                if (Accept("(")) arguments = Arguments(out _);
                else if (Peek().Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float || (Peek().Kind == TokenKind.Name && !Peek().Is("and") && !Peek().Is("or") && !Peek().Is("else") && !Peek().Is("if")))
                    arguments.Add(Primary());
                left = new TestExpr(left, test, arguments, negated, t.Position);
            }
            else return left;
        }
    }

    private Expr Additive()
    {
        var left = Concatenation();
        while (Peek().Kind == TokenKind.Operator && Peek().Text is "+" or "-")
        {
            var t = Next();
            left = new BinaryExpr(t.Text, left, Concatenation(), t.Position);
        }
        return left;
    }

    private Expr Concatenation()
    {
        var left = Multiplicative();
        while (Peek().Is("~")) { int at = Next().Position; left = new BinaryExpr("~", left, Multiplicative(), at); }
        return left;
    }

    private Expr Multiplicative()
    {
        var left = Unary();
        while (Peek().Kind == TokenKind.Operator && Peek().Text is "*" or "/" or "//" or "%")
        {
            var t = Next();
            left = new BinaryExpr(t.Text, left, Unary(), t.Position);
        }
        return left;
    }

    private Expr Unary()
    {
        if (Peek().Is("-")) { int at = Next().Position; return new UnaryExpr("-", Unary(), at); }
        if (Peek().Is("+")) { Next(); return Unary(); }
        return Postfix(Primary());
    }

    private Expr Postfix(Expr value)
    {
        while (true)
        {
            var t = Peek();
            if (t.Is("."))
            {
                Next();
                var name = Next();
                if (name.Kind is not (TokenKind.Name or TokenKind.Integer)) throw _error(name.Position, "expected an attribute name after '.'");
                value = new AttributeExpr(value, name.Text, t.Position);
            }
            else if (t.Is("["))
            {
                Next();
                Expr? start = Peek().Is(":") ? null : Expression();
                if (Accept(":"))
                {
                    Expr? stop = Peek().Is("]") || Peek().Is(":") ? null : Expression();
                    Expr? step = Accept(":") && !Peek().Is("]") ? Expression() : null;
                    Expect("]");
                    value = new SliceExpr(value, start, stop, step, t.Position);
                }
                else
                {
                    Expect("]");
                    value = new ItemExpr(value, start!, t.Position);
                }
            }
            else if (t.Is("("))
            {
                Next();
                if (value is AttributeExpr method && !Methods.Contains(method.Name))
                    throw _error(method.Position, $"the method '{method.Name}' is not supported");
                if (value is NameExpr function && !Functions.Contains(function.Name))
                    throw _error(function.Position, $"the function '{function.Name}' is not supported (supported: {string.Join(", ", Functions)})");
                var arguments = Arguments(out var named);
                value = new CallExpr(value, arguments, named, t.Position);
            }
            else if (t.Is("|"))
            {
                Next();
                var name = Next();
                if (name.Kind != TokenKind.Name) throw _error(name.Position, "expected a filter name after '|'");
                if (!Filters.Contains(name.Text)) throw _error(name.Position, $"the filter '{name.Text}' is not supported");
                var arguments = Accept("(") ? Arguments(out _) : [];
                value = new FilterExpr(value, name.Text, arguments, name.Position);
            }
            else return value;
        }
    }

    private List<Expr> Arguments(out List<(string, Expr)> named)
    {
        var arguments = new List<Expr>();
        named = [];
        while (!Accept(")"))
        {
            if (Peek().Kind == TokenKind.Name && PeekAt(1).Is("="))
            {
                string name = Next().Text;
                Next();
                named.Add((name, Expression()));
            }
            else arguments.Add(Expression());
            if (!Peek().Is(")")) Expect(",");
        }
        return arguments;
    }

    private Expr Primary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TokenKind.String:
            {
                string text = (string)t.Value!;
                while (Peek().Kind == TokenKind.String) text += (string)Next().Value!;   // adjacent literals concatenate
                return new LiteralExpr(text, t.Position);
            }
            case TokenKind.Integer:
            case TokenKind.Float:
                return new LiteralExpr(t.Value, t.Position);
            case TokenKind.Name:
                return t.Text switch
                {
                    "true" or "True" => new LiteralExpr(true, t.Position),
                    "false" or "False" => new LiteralExpr(false, t.Position),
                    "none" or "None" => new LiteralExpr(null, t.Position),
                    _ => new NameExpr(t.Text, t.Position),
                };
            case TokenKind.Operator when t.Text == "(":
            {
                var inner = Expression();
                if (Accept(","))
                {
                    var items = new List<Expr> { inner };
                    while (!Accept(")")) { items.Add(Expression()); if (!Peek().Is(")")) Expect(","); }
                    return new ListExpr(items, t.Position);
                }
                Expect(")");
                return inner;
            }
            case TokenKind.Operator when t.Text == "[":
            {
                var items = new List<Expr>();
                while (!Accept("]")) { items.Add(Expression()); if (!Peek().Is("]")) Expect(","); }
                return new ListExpr(items, t.Position);
            }
            case TokenKind.Operator when t.Text == "{":
            {
                var items = new List<(Expr, Expr)>();
                while (!Accept("}"))
                {
                    var key = Expression();
                    Expect(":");
                    items.Add((key, Expression()));
                    if (!Peek().Is("}")) Expect(",");
                }
                return new DictExpr(items, t.Position);
            }
            default:
                throw _error(t.Position, t.Kind == TokenKind.End ? "the expression ends too early" : $"unexpected '{t.Text}'");
        }
    }

    // ---------------------------------------------------------------- tokens

    private void Begin(Segment segment)
    {
        _tokens = JinjaLexer.Tokens(segment.Content, segment.Position, _error);
        _at = 0;
    }

    private Token Peek() => _tokens[_at];
    private Token PeekAt(int ahead) => _tokens[Math.Min(_at + ahead, _tokens.Count - 1)];
    private Token Next() => _tokens[_at < _tokens.Count - 1 ? _at++ : _at];

    private bool Accept(string text)
    {
        if (!Peek().Is(text)) return false;
        _at++;
        return true;
    }

    private void Expect(string text)
    {
        if (!Accept(text)) throw _error(Peek().Position, $"expected '{text}', found '{Peek().Text}'");
    }

    private void Expect(TokenKind kind, string what)
    {
        if (Peek().Kind != kind) throw _error(Peek().Position, $"expected {what}, found '{Peek().Text}'");
    }

    private string ExpectName()
    {
        var t = Next();
        if (t.Kind != TokenKind.Name) throw _error(t.Position, $"expected a name, found '{t.Text}'");
        return t.Text;
    }
}
