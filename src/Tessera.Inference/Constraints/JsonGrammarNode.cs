namespace Tessera.Inference.Constraints;

/// <summary>
/// A node of a compiled <see cref="JsonGrammar"/>: what one JSON value may be. The recognizer (<see cref="JsonRecognizer"/>)
/// walks these; they hold no per-sequence state, so one grammar serves every choice of a request.
/// </summary>
internal abstract class JsonGrammarNode
{
    /// <summary>Whether a value of this node may begin with <paramref name="b"/> (a union picks its member by the first byte).</summary>
    public abstract bool MayStartWith(byte b);

    /// <summary>Whether the node may match no bytes at all (a repetition of at least zero items, a sequence of such); no JSON value may.</summary>
    public virtual bool MayBeEmpty => false;
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
/// <remarks>
/// With <see cref="Variants"/>, a discriminated union of objects: this node's one property is the discriminator (a required key
/// whose value is a literal of one alternative a variant, in the variants' order), and once its value is read the object goes
/// on as the variant it names, whose first property is that same discriminator. So the rest of an object may depend on a value
/// written in it (a tool call's arguments on its name), which a union told apart by its first byte cannot say.
/// </remarks>
internal sealed class ObjectNode(IReadOnlyList<JsonGrammarProperty> properties, IReadOnlyList<ObjectNode>? variants = null) : JsonGrammarNode
{
    public IReadOnlyList<JsonGrammarProperty> Properties { get; } = properties;

    /// <summary>The objects the discriminator's value chooses between (alternative i of its literal: variant i); or null.</summary>
    public IReadOnlyList<ObjectNode>? Variants { get; } = variants;

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

/// <summary>
/// Fixed bytes that are not a JSON value: a tool-call format's tags and separators between calls. Matched exactly, with no
/// whitespace before them (a JSON value's gap does not apply).
/// </summary>
internal sealed class TextNode : JsonGrammarNode
{
    public TextNode(byte[] bytes)
    {
        if (bytes.Length == 0) throw new ArgumentException("a text node needs at least one byte", nameof(bytes));
        Bytes = bytes;
    }

    public byte[] Bytes { get; }

    public override bool MayStartWith(byte b) => Bytes[0] == b;
}

/// <summary>
/// Nodes one after another (a call's JSON, then its closing tag). Where a part may be empty or repeat, the byte that follows
/// decides whether it goes on, so the constructor refuses a part whose next item could begin like what follows it.
/// </summary>
internal sealed class SequenceNode : JsonGrammarNode
{
    public SequenceNode(IReadOnlyList<JsonGrammarNode> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("a sequence needs at least one part", nameof(parts));
        Parts = parts;
        for (int i = 0; i < parts.Count; i++)
        {
            var goesOn = parts[i] is RepeatNode r ? r.Item : parts[i].MayBeEmpty ? parts[i] : null;
            if (goesOn is null) continue;
            for (int b = 0; b < 256; b++)
                if (goesOn.MayStartWith((byte)b) && MayStartWith(i + 1, (byte)b))
                    throw new ArgumentException($"sequence part {i} may go on with the byte 0x{b:x2}, which may also begin what follows it; " +
                        "the recognizer decides by that byte and could not tell them apart");
        }
    }

    public IReadOnlyList<JsonGrammarNode> Parts { get; }

    public override bool MayStartWith(byte b) => MayStartWith(0, b);

    public override bool MayBeEmpty => Parts.All(p => p.MayBeEmpty);

    /// <summary>Whether the parts from <paramref name="from"/> on may begin with <paramref name="b"/>.</summary>
    public bool MayStartWith(int from, byte b)
    {
        for (int i = from; i < Parts.Count; i++)
        {
            if (Parts[i].MayStartWith(b)) return true;
            if (!Parts[i].MayBeEmpty) return false;
        }
        return false;
    }

    /// <summary>Whether the parts from <paramref name="from"/> on may all be empty: the sequence may end there.</summary>
    public bool MayEndAt(int from)
    {
        for (int i = from; i < Parts.Count; i++)
            if (!Parts[i].MayBeEmpty) return false;
        return true;
    }
}

/// <summary>
/// One node <see cref="Min"/> to <see cref="Max"/> times in a row (tool calls, one or more). After each item the next byte
/// decides: one that may begin another item begins it (while fewer than Max were read), any other ends the repetition (once
/// Min were read). The item may not be empty and begins with its first byte (no whitespace before it).
/// </summary>
internal sealed class RepeatNode : JsonGrammarNode
{
    public RepeatNode(JsonGrammarNode item, int min, int max)
    {
        if (item.MayBeEmpty) throw new ArgumentException("a repeated item may not be empty", nameof(item));
        ArgumentOutOfRangeException.ThrowIfNegative(min);
        ArgumentOutOfRangeException.ThrowIfLessThan(max, Math.Max(min, 1));
        Item = item;
        Min = min;
        Max = max;
    }

    public JsonGrammarNode Item { get; }

    /// <summary>Fewest items.</summary>
    public int Min { get; }

    /// <summary>Most items (<see cref="int.MaxValue"/>: no bound).</summary>
    public int Max { get; }

    public override bool MayStartWith(byte b) => Item.MayStartWith(b);

    public override bool MayBeEmpty => Min == 0;
}
