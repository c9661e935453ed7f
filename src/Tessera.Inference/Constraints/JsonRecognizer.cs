namespace Tessera.Inference.Constraints;

/// <summary>
/// One sequence's place in a <see cref="JsonGrammar"/>: a pushdown recognizer over the bytes of the generated text, which says
/// whether a token's bytes may come next (<see cref="Accepts"/>) and takes them in (<see cref="Advance"/>). The text it accepts
/// is one value of the grammar's root, then nothing more (<see cref="IsComplete"/>); a root of forced tool calls is a sequence of
/// JSON values and fixed text that may end before it is complete, between two calls (<see cref="CanEnd"/>). JSON is read with at most one space in each gap
/// between tokens of the syntax (<c>{"a": 1, "b": [2, 3]}</c> and the compact form; no newlines: given any more room, a
/// model can spend its tokens on whitespace, as outlines found and as random models here do at once). Numbers are bounded (16 digits before and after the point, 3 in the exponent) and values nest at most
/// <see cref="MaxDepth"/> deep, so no state is infinite; strings are not bounded (max_tokens bounds them).
/// </summary>
public sealed class JsonRecognizer
{
    /// <summary>Deepest nesting of arrays and objects.</summary>
    public const int MaxDepth = 32;

    /// <summary>Most whitespace bytes (spaces) in one gap between tokens of the syntax.</summary>
    public const int MaxWhitespace = 1;

    private const int MaxDigits = 16, MaxExponentDigits = 3;

    private List<Frame> _stack;
    private int _gap;            // whitespace bytes in the current gap
    private bool _spaced;        // whether the byte being read went to a gap

    internal JsonRecognizer(JsonGrammarNode root) => _stack = [Frame.Value(root)];

    private JsonRecognizer(List<Frame> stack, int gap)
    {
        _stack = stack;
        _gap = gap;
    }

    /// <summary>Whether the root value is complete: no byte may follow.</summary>
    public bool IsComplete => _stack.Count == 0;

    /// <summary>
    /// Whether the text may end here: it is complete, or what is open may end without another byte (a repetition that has
    /// its fewest items, between two of them). Then the end-of-text token may be sampled (<see cref="ConstrainedVocabulary"/>),
    /// beside the bytes that go on. For a grammar of one JSON value this is <see cref="IsComplete"/>.
    /// </summary>
    public bool CanEnd => IsComplete || Clone().EndHere();

    /// <summary>Whether <paramref name="bytes"/> may come next (all of them; an empty token only once the value is complete).</summary>
    public bool Accepts(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty) return IsComplete;
        var probe = Clone();
        foreach (var b in bytes)
            if (!probe.Feed(b)) return false;
        return true;
    }

    /// <summary>Takes in <paramref name="bytes"/>, which <see cref="Accepts"/> allowed.</summary>
    /// <exception cref="ArgumentException">The grammar does not allow them here; the state is then undefined.</exception>
    public void Advance(ReadOnlySpan<byte> bytes)
    {
        foreach (var b in bytes)
            if (!Feed(b)) throw new ArgumentException($"JSON grammar: byte 0x{b:x2} is not allowed here");
    }

    /// <summary>
    /// Whether reading <paramref name="b"/> leaves the state exactly as it is: an ordinary byte inside a string (not a quote,
    /// a backslash or a control character). <see cref="TokenVocabulary"/> walks such bytes without copying the state.
    /// </summary>
    internal bool KeepsStateOn(byte b) => InString && IsOrdinaryStringByte(b);

    /// <summary>Whether the recognizer is inside a string, past any escape: where an ordinary byte keeps the state.</summary>
    internal bool InString => _stack.Count > 0 && _stack[^1] is { Kind: Kind.String, State: Normal };

    /// <summary>A byte a string takes as it is: not a quote, a backslash or a control character.</summary>
    internal static bool IsOrdinaryStringByte(byte b) => b >= 0x20 && b != '"' && b != '\\';

    /// <summary>A copy of this state after <paramref name="b"/>, or null when the grammar refuses it here.</summary>
    internal JsonRecognizer? After(byte b)
    {
        var next = Clone();
        return next.Feed(b) ? next : null;
    }

    private JsonRecognizer Clone()
    {
        var stack = new List<Frame>(_stack.Count + 4);
        foreach (var f in _stack) stack.Add(f.Clone());
        return new JsonRecognizer(stack, _gap);
    }

    private enum Kind { Value, Object, AnyObject, Array, String, Number, Literal, Text, Sequence, Repeat }

    // Object and array states. Pending: a child frame above this one is being read.
    private const int Open = 0, KeyPending = 1, Colon = 2, ValuePending = 3, AfterValue = 4, Comma = 5;
    // String states.
    private const int Normal = 0, Escape = 1;              // 2..5: that many hex digits of \uXXXX still to come
    // Number states.
    private const int NStart = 0, NMinus = 1, NZero = 2, NInt = 3, NDot = 4, NFrac = 5, NE = 6, NESign = 7, NExp = 8;

    private sealed class Frame
    {
        public Kind Kind;
        public JsonGrammarNode Node = AnyValueNode.Instance;
        public int State;
        public int Index;              // Object: the next property that may come; Literal, Text: bytes matched; Number: digits in the part;
                                       // Sequence: the part being read (or next); Repeat: items read
        public int First;              // Object: the first property of the key being matched, then the property matched
        public ulong Alive;            // Literal: the alternatives still matching (bit i: alternative i)
        public IReadOnlyList<byte[]> Alternatives = [];

        public static Frame Value(JsonGrammarNode node) => new() { Kind = Kind.Value, Node = node };

        public Frame Clone() => (Frame)MemberwiseClone();
    }

    private enum Step { Consumed, Rejected, Done }   // Done: the frame ended before the byte, which its parent now reads

    private bool Feed(byte b)
    {
        _spaced = false;
        while (_stack.Count > 0)
        {
            switch (Read(_stack[^1], b))
            {
                case Step.Consumed:
                    if (!_spaced) _gap = 0;
                    return true;
                case Step.Rejected: return false;
                default: Complete(); break;
            }
        }
        return false;                                       // the value is complete: nothing may follow
    }

    /// <summary>
    /// Pops the top frame, which has read a whole value, and tells its parent; a sequence past its last part and a repetition
    /// at its most items are whole then too, and complete in turn.
    /// </summary>
    private void Complete()
    {
        while (true)
        {
            var child = _stack[^1];
            _stack.RemoveAt(_stack.Count - 1);
            if (_stack.Count == 0) return;
            var parent = _stack[^1];
            switch (parent.Kind)
            {
                case Kind.Object when parent.State == KeyPending:
                    int matched = parent.First + MatchedAlternative(child);
                    parent.First = matched;
                    parent.Index = matched + 1;
                    parent.State = Colon;
                    return;
                case Kind.AnyObject when parent.State == KeyPending:
                    parent.State = Colon;
                    return;
                case Kind.Sequence:
                    if (++parent.Index < ((SequenceNode)parent.Node).Parts.Count) return;
                    continue;                               // its last part: the sequence is whole
                case Kind.Repeat:
                    if (parent.Index < int.MaxValue) parent.Index++;
                    if (parent.Index < ((RepeatNode)parent.Node).Max) return;
                    continue;                               // its most items: the repetition is whole
                default:                                    // a value inside an object or an array
                    // A discriminated union's discriminator was read: the object goes on as the variant it names.
                    if (parent.Kind == Kind.Object && ((ObjectNode)parent.Node).Variants is { } variants) parent.Node = variants[MatchedAlternative(child)];
                    parent.State = AfterValue;
                    return;
            }
        }
    }

    /// <summary>Ends the text here if every open frame may end without another byte; returns whether it could (the state is then spent).</summary>
    private bool EndHere()
    {
        while (_stack.Count > 0)
        {
            if (!MayEnd(_stack[^1])) return false;
            Complete();
        }
        return true;
    }

    private static bool MayEnd(Frame f) => f.Kind switch
    {
        Kind.Value => f.Node.MayBeEmpty,
        Kind.Number => f.State is NZero or NInt or NFrac or NExp,
        Kind.Literal => Enumerable.Range(0, f.Alternatives.Count).Any(i => (f.Alive & (1UL << i)) != 0 && f.Alternatives[i].Length == f.Index),
        Kind.Sequence => ((SequenceNode)f.Node).MayEndAt(f.Index),
        Kind.Repeat => f.Index >= ((RepeatNode)f.Node).Min,
        _ => false,
    };

    private static int MatchedAlternative(Frame literal)
    {
        for (int i = 0; i < literal.Alternatives.Count; i++)
            if ((literal.Alive & (1UL << i)) != 0 && literal.Alternatives[i].Length == literal.Index) return i;
        throw new InvalidOperationException("JSON grammar: a literal ended without a complete alternative");
    }

    private Step Read(Frame f, byte b) => f.Kind switch
    {
        Kind.Value => Begin(f, b),
        Kind.Object => ReadObject(f, b),
        Kind.AnyObject => ReadAnyObject(f, b),
        Kind.Array => ReadArray(f, b),
        Kind.String => ReadString(f, b),
        Kind.Number => ReadNumber(f, b),
        Kind.Text => ReadText(f, b),
        Kind.Sequence => ReadSequence(f, b),
        Kind.Repeat => ReadRepeat(f, b),
        _ => ReadLiteral(f, b),
    };

    private static bool IsSpace(byte b) => b == ' ';

    /// <summary>A whitespace byte in a gap, while the gap has room.</summary>
    private Step Gap()
    {
        if (_gap >= MaxWhitespace) return Step.Rejected;
        _gap++;
        _spaced = true;
        return Step.Consumed;
    }

    /// <summary>The first byte of a value (or whitespace before it): the frame becomes the value's own, which reads the byte.</summary>
    private Step Begin(Frame f, byte b)
    {
        var node = f.Node;
        switch (node)                                       // not JSON values: no whitespace before them
        {
            case TextNode: f.Kind = Kind.Text; f.Index = 0; return ReadText(f, b);
            case SequenceNode: f.Kind = Kind.Sequence; f.Index = 0; return ReadSequence(f, b);
            case RepeatNode: f.Kind = Kind.Repeat; f.Index = 0; return ReadRepeat(f, b);
        }
        if (IsSpace(b)) return Gap();
        if (node is UnionNode union)
        {
            node = union.Members.FirstOrDefault(m => m.MayStartWith(b))!;
            if (node is null) return Step.Rejected;
        }
        if (node is AnyValueNode)
        {
            node = b switch
            {
                (byte)'{' => AnyObjectNode.Instance,
                (byte)'[' => new ArrayNode(AnyValueNode.Instance),
                (byte)'"' => StringNode.Instance,
                (byte)'t' or (byte)'f' or (byte)'n' => Literals.TrueFalseNull,
                _ => Literals.AnyNumber,
            };
        }
        if (!node.MayStartWith(b)) return Step.Rejected;
        bool nests = node is ObjectNode or AnyObjectNode or ArrayNode;
        if (nests && _stack.Count(x => x.Kind is Kind.Object or Kind.AnyObject or Kind.Array) >= MaxDepth) return Step.Rejected;
        f.Node = node;
        f.State = 0;
        f.Index = 0;
        switch (node)
        {
            case ObjectNode: f.Kind = Kind.Object; f.State = Open; return Step.Consumed;
            case AnyObjectNode: f.Kind = Kind.AnyObject; f.State = Open; return Step.Consumed;
            case ArrayNode: f.Kind = Kind.Array; f.State = Open; return Step.Consumed;
            case StringNode: f.Kind = Kind.String; f.State = Normal; return Step.Consumed;
            case NumberNode: f.Kind = Kind.Number; f.State = NStart; return ReadNumber(f, b);
            case LiteralNode literal:
                f.Kind = Kind.Literal;
                f.Alternatives = literal.Alternatives;
                f.Alive = literal.Alternatives.Count == 64 ? ulong.MaxValue : (1UL << literal.Alternatives.Count) - 1;
                return ReadLiteral(f, b);
            default: return Step.Rejected;
        }
    }

    private Step ReadObject(Frame f, byte b)
    {
        var properties = ((ObjectNode)f.Node).Properties;
        if (IsSpace(b)) return Gap();                       // Open, Colon, AfterValue, Comma: a child reads the other states
        switch (f.State)
        {
            case Open or Comma when b == '"':
                // The key of one of the properties from the next one up to the first required one (optional ones may be left out).
                int first = f.Index, end = first;
                while (end < properties.Count && !properties[end++].Required) { }
                if (end == first) return Step.Rejected;
                f.First = first;
                f.State = KeyPending;
                var keys = new byte[end - first][];
                for (int i = first; i < end; i++) keys[i - first] = properties[i].Key;
                var literal = new Frame { Kind = Kind.Literal, Alternatives = keys, Alive = keys.Length == 64 ? ulong.MaxValue : (1UL << keys.Length) - 1, Index = 1 };
                _stack.Add(literal);                        // every key begins with the quote just read
                return Step.Consumed;
            case Open or AfterValue when b == '}':
                for (int i = f.Index; i < properties.Count; i++)
                    if (properties[i].Required) return Step.Rejected;
                Complete();
                return Step.Consumed;
            case AfterValue when b == ',':
                if (f.Index >= properties.Count) return Step.Rejected;
                f.State = Comma;
                return Step.Consumed;
            case Colon when b == ':':
                f.State = ValuePending;
                _stack.Add(Frame.Value(properties[f.First].Value));
                return Step.Consumed;
            default: return Step.Rejected;
        }
    }

    private Step ReadAnyObject(Frame f, byte b)
    {
        if (IsSpace(b)) return Gap();
        switch (f.State)
        {
            case Open or Comma when b == '"':
                f.State = KeyPending;
                _stack.Add(new Frame { Kind = Kind.String, Node = StringNode.Instance, State = Normal });
                return Step.Consumed;
            case Open or AfterValue when b == '}':
                Complete();
                return Step.Consumed;
            case Colon when b == ':':
                f.State = ValuePending;
                _stack.Add(Frame.Value(AnyValueNode.Instance));
                return Step.Consumed;
            case AfterValue when b == ',':
                f.State = Comma;
                return Step.Consumed;
            default: return Step.Rejected;
        }
    }

    private Step ReadArray(Frame f, byte b)
    {
        var items = ((ArrayNode)f.Node).Items;
        if (IsSpace(b)) return Gap();
        switch (f.State)
        {
            case Open when b == ']':
            case AfterValue when b == ']':
                Complete();
                return Step.Consumed;
            case AfterValue when b == ',':
                f.State = Comma;
                return Step.Consumed;
            case Open or Comma:
                // A refused byte leaves the state undefined, which is fine: Accepts reads a copy, and Advance throws.
                f.State = ValuePending;
                var value = Frame.Value(items);
                _stack.Add(value);
                return Begin(value, b);
            default: return Step.Rejected;
        }
    }

    private Step ReadText(Frame f, byte b)
    {
        var bytes = ((TextNode)f.Node).Bytes;
        if (bytes[f.Index] != b) return Step.Rejected;
        if (++f.Index == bytes.Length) Complete();
        return Step.Consumed;
    }

    /// <summary>A sequence on top of the stack has no part open: the byte begins the next one (a part that may be empty may end at once).</summary>
    private Step ReadSequence(Frame f, byte b)
    {
        var parts = ((SequenceNode)f.Node).Parts;
        if (f.Index >= parts.Count) return Step.Done;
        var part = Frame.Value(parts[f.Index]);
        _stack.Add(part);
        return Begin(part, b);
    }

    /// <summary>Between items (or before the first): a byte that may begin another item begins it, else the repetition ends, once it has its fewest.</summary>
    private Step ReadRepeat(Frame f, byte b)
    {
        var repeat = (RepeatNode)f.Node;
        if (f.Index < repeat.Max && repeat.Item.MayStartWith(b))
        {
            var item = Frame.Value(repeat.Item);
            _stack.Add(item);
            return Begin(item, b);
        }
        return f.Index >= repeat.Min ? Step.Done : Step.Rejected;
    }

    private Step ReadString(Frame f, byte b)
    {
        switch (f.State)
        {
            case Normal:
                if (b == '"') { Complete(); return Step.Consumed; }
                if (b == '\\') { f.State = Escape; return Step.Consumed; }
                return b < 0x20 ? Step.Rejected : Step.Consumed;   // control characters must be escaped; UTF-8 bytes pass
            case Escape:
                if (b == 'u') { f.State = 2 + 3; return Step.Consumed; }   // four hex digits to come
                if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t') { f.State = Normal; return Step.Consumed; }
                return Step.Rejected;
            default:                                        // \uXXXX
                if (!IsHex(b)) return Step.Rejected;
                f.State = f.State == 2 ? Normal : f.State - 1;
                return Step.Consumed;
        }
    }

    private static bool IsHex(byte b) => b is >= (byte)'0' and <= (byte)'9' or >= (byte)'a' and <= (byte)'f' or >= (byte)'A' and <= (byte)'F';

    private Step ReadNumber(Frame f, byte b)
    {
        bool digit = b is >= (byte)'0' and <= (byte)'9';
        bool integer = ((NumberNode)f.Node).Integer;
        int next = f.State switch
        {
            NStart when b == '-' => NMinus,
            NStart or NMinus when b == '0' => NZero,
            NStart or NMinus when digit => NInt,
            NInt when digit && f.Index < MaxDigits => NInt,
            NZero or NInt when b == '.' && !integer => NDot,
            NDot or NFrac when digit && f.Index < MaxDigits => NFrac,
            NZero or NInt or NFrac when (b == 'e' || b == 'E') && !integer => NE,
            NE when b is (byte)'+' or (byte)'-' => NESign,
            NE or NESign or NExp when digit && (f.State != NExp || f.Index < MaxExponentDigits) => NExp,
            _ => -1,
        };
        if (next < 0) return f.State is NZero or NInt or NFrac or NExp ? Step.Done : Step.Rejected;
        f.Index = next == f.State ? f.Index + 1 : digit ? 1 : 0;
        f.State = next;
        return Step.Consumed;
    }

    private Step ReadLiteral(Frame f, byte b)
    {
        ulong alive = 0;
        bool ended = false;
        for (int i = 0; i < f.Alternatives.Count; i++)
        {
            if ((f.Alive & (1UL << i)) == 0) continue;
            var a = f.Alternatives[i];
            if (a.Length == f.Index) ended = true;
            else if (a[f.Index] == b) alive |= 1UL << i;
        }
        if (alive == 0) return ended ? Step.Done : Step.Rejected;
        f.Alive = alive;
        f.Index++;
        // Complete as soon as one alternative is matched whole and none goes on (keys, strings, true/false/null always are).
        bool whole = false, longer = false;
        for (int i = 0; i < f.Alternatives.Count; i++)
        {
            if ((alive & (1UL << i)) == 0) continue;
            if (f.Alternatives[i].Length == f.Index) whole = true; else longer = true;
        }
        if (whole && !longer) Complete();
        return Step.Consumed;
    }

    /// <summary>Nodes the recognizer makes for json_object mode's values.</summary>
    private static class Literals
    {
        public static readonly LiteralNode TrueFalseNull = new([[.. "true"u8], [.. "false"u8], [.. "null"u8]]);
        public static readonly NumberNode AnyNumber = new(integer: false);
    }
}
