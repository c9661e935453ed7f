namespace Tessera.Models.Chat.Jinja;

// The syntax tree of the Jinja subset chat templates use. Every node keeps its offset in the template for errors.

internal abstract record Expr(int Position);
internal sealed record LiteralExpr(object? Value, int Position) : Expr(Position);
internal sealed record NameExpr(string Name, int Position) : Expr(Position);
internal sealed record AttributeExpr(Expr Target, string Name, int Position) : Expr(Position);
internal sealed record ItemExpr(Expr Target, Expr Index, int Position) : Expr(Position);
internal sealed record SliceExpr(Expr Target, Expr? Start, Expr? Stop, Expr? Step, int Position) : Expr(Position);
internal sealed record CallExpr(Expr Callee, List<Expr> Arguments, List<(string Name, Expr Value)> Named, int Position) : Expr(Position);
internal sealed record FilterExpr(Expr Target, string Name, List<Expr> Arguments, int Position) : Expr(Position);
internal sealed record TestExpr(Expr Target, string Name, List<Expr> Arguments, bool Negated, int Position) : Expr(Position);
internal sealed record UnaryExpr(string Operator, Expr Operand, int Position) : Expr(Position);
internal sealed record BinaryExpr(string Operator, Expr Left, Expr Right, int Position) : Expr(Position);
internal sealed record ConditionalExpr(Expr Then, Expr Condition, Expr? Else, int Position) : Expr(Position);
internal sealed record ListExpr(List<Expr> Items, int Position) : Expr(Position);
internal sealed record DictExpr(List<(Expr Key, Expr Value)> Items, int Position) : Expr(Position);

internal abstract record Node(int Position);
internal sealed record TextNode(string Text, int Position) : Node(Position);
internal sealed record OutputNode(Expr Value, int Position) : Node(Position);
internal sealed record IfNode(List<(Expr Condition, List<Node> Body)> Branches, List<Node>? Else, int Position) : Node(Position);
internal sealed record ForNode(List<string> Targets, Expr Iterable, Expr? Filter, List<Node> Body, List<Node>? Else, int Position) : Node(Position);
internal sealed record SetNode(string Name, string? Attribute, Expr Value, int Position) : Node(Position);
