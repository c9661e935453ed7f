namespace Tessera.Inference.Constraints;

/// <summary>
/// A node of a compiled <see cref="JsonGrammar"/>: what one JSON value may be. The recognizer (<see cref="JsonRecognizer"/>)
/// walks these; they hold no per-sequence state, so one grammar serves every choice of a request.
/// </summary>
internal abstract class JsonGrammarNode
{
    /// <summary>Whether a value of this node may begin with <paramref name="b"/> (a union picks its member by the first byte).</summary>
    public abstract bool MayStartWith(byte b);
}

/// <summary>Any JSON value (OpenAI's json_object mode below the root).</summary>
internal sealed class AnyValueNode : JsonGrammarNode
{
    public static readonly AnyValueNode Instance = new();

    public override bool MayStartWith(byte b) => b is (byte)'{' or (byte)'[' or (byte)'"' or (byte)'-' or (>= (byte)'0' and <= (byte)'9') or (byte)'t' or (byte)'f' or (byte)'n';
}

/// <summary>An object of any keys and values (json_object mode).</summary>
internal sealed class AnyObjectNode : JsonGrammarNode
{
    public static readonly AnyObjectNode Instance = new();

    public override bool MayStartWith(byte b) => b == '{';
}

/// <summary>An object with the listed properties, in their order; a required one may not be skipped, nothing else may appear.</summary>
internal sealed class ObjectNode(IReadOnlyList<JsonGrammarProperty> properties) : JsonGrammarNode
{
    public IReadOnlyList<JsonGrammarProperty> Properties { get; } = properties;

    public override bool MayStartWith(byte b) => b == '{';
}

/// <summary>A property of an <see cref="ObjectNode"/>: its key as it is written, quotes included (<c>"name"</c>).</summary>
internal sealed record JsonGrammarProperty(byte[] Key, JsonGrammarNode Value, bool Required);

/// <summary>An array of values of one node.</summary>
internal sealed class ArrayNode(JsonGrammarNode items) : JsonGrammarNode
{
    public JsonGrammarNode Items { get; } = items;

    public override bool MayStartWith(byte b) => b == '[';
}

/// <summary>Any string.</summary>
internal sealed class StringNode : JsonGrammarNode
{
    public static readonly StringNode Instance = new();

    public override bool MayStartWith(byte b) => b == '"';
}

/// <summary>A number; <see cref="Integer"/>: without a fraction or an exponent.</summary>
internal sealed class NumberNode(bool integer) : JsonGrammarNode
{
    public bool Integer { get; } = integer;

    public override bool MayStartWith(byte b) => b == '-' || b is >= (byte)'0' and <= (byte)'9';
}

/// <summary>One of a few fixed JSON texts: true, false, null, an enum's or a const's values.</summary>
internal sealed class LiteralNode(IReadOnlyList<byte[]> alternatives) : JsonGrammarNode
{
    public IReadOnlyList<byte[]> Alternatives { get; } = alternatives;

    public override bool MayStartWith(byte b) => Alternatives.Any(a => a[0] == b);
}

/// <summary>One of several nodes, told apart by their first byte (the compiler refuses members that share one).</summary>
internal sealed class UnionNode(IReadOnlyList<JsonGrammarNode> members) : JsonGrammarNode
{
    public IReadOnlyList<JsonGrammarNode> Members { get; } = members;

    public override bool MayStartWith(byte b) => Members.Any(m => m.MayStartWith(b));
}
