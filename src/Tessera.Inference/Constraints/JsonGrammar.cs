using System.Text;
using System.Text.Json;

namespace Tessera.Inference.Constraints;

/// <summary>
/// What a constrained completion may be: a JSON object (OpenAI's <c>response_format: {"type": "json_object"}</c>, any keys and
/// values) or an object of a JSON schema (<c>{"type": "json_schema", "json_schema": {"schema": ...}}</c>). Compiled once per
/// request; each choice walks it with its own <see cref="JsonRecognizer"/>, and the engine samples only tokens whose bytes it
/// accepts, so the text is always a prefix of a valid document and, once complete, is one.
/// <para>The schema subset: <c>type</c> (object, array, string, number, integer, boolean, null, or a list of them),
/// <c>properties</c> with <c>required</c> (properties are written in their declared order, the optional ones may be left out,
/// no others appear: <c>additionalProperties</c> may only be false or absent), <c>items</c>, <c>enum</c> and <c>const</c> of
/// strings, numbers, booleans and null, <c>anyOf</c> of members that begin differently, <c>$ref</c> to <c>#/$defs/Name</c> or
/// <c>#/definitions/Name</c> (what Pydantic writes for nested models; not recursive ones), and an empty schema (any value).
/// Annotations (description, title, default, examples, format, $schema, $comment, $id) are ignored. Anything else is refused
/// by name (<see cref="ArgumentException"/>), never silently dropped: a keyword the grammar cannot enforce would let the output
/// break the schema.</para>
/// <para>Inside the assembly, the tool-call formats build grammars of more than one value from the same nodes
/// (<see cref="Tools.ToolCallGrammar"/>): fixed text between values, sequences, repetitions, and an object whose properties
/// after its first depend on that first value (a call's arguments on its name).</para>
/// </summary>
public sealed class JsonGrammar
{
    /// <summary>Most alternatives of one enum, and most properties of one object.</summary>
    public const int MaxAlternatives = 64;

    private static readonly HashSet<string> Annotations = new(StringComparer.Ordinal)
        { "description", "title", "default", "examples", "format", "$schema", "$comment", "$id", "strict" };

    private readonly JsonGrammarNode _root;

    // Keys and string values as a model writes them: UTF-8 as it is, only what JSON requires escaped.
    private static readonly JsonSerializerOptions Relaxed = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private JsonGrammar(JsonGrammarNode root, string description)
    {
        _root = root;
        Description = description;
    }

    /// <summary>"json_object", or "json_schema" and the schema's name.</summary>
    public string Description { get; }

    /// <summary>Any JSON object (json_object mode).</summary>
    public static JsonGrammar AnyObject() => new(AnyObjectNode.Instance, "json_object");

    /// <summary>The objects <paramref name="schema"/> describes; the root must be an object.</summary>
    /// <exception cref="ArgumentException">The schema uses something outside the subset, or is not an object schema; the message names the place.</exception>
    public static JsonGrammar FromSchema(JsonElement schema, string name = "schema")
    {
        var root = Compile(schema, "schema", new Definitions(schema, []));
        if (root is not (ObjectNode or AnyObjectNode))
            throw new ArgumentException("schema: the root must be an object schema (\"type\": \"object\"), as OpenAI's structured outputs require");
        return new JsonGrammar(root, $"json_schema '{name}'");
    }

    /// <summary>A fresh recognizer at the start of the text.</summary>
    public JsonRecognizer Start() => new(_root);

    /// <summary>A grammar of <paramref name="root"/>, which may be more than one JSON value (tool calls between their tags).</summary>
    internal static JsonGrammar Of(JsonGrammarNode root, string description) => new(root, description);

    /// <summary>The node of any schema of the subset (the root need not be an object); <paramref name="path"/> names it in errors.</summary>
    /// <exception cref="ArgumentException">The schema uses something outside the subset; the message names the place.</exception>
    internal static JsonGrammarNode CompileValue(JsonElement schema, string path) => Compile(schema, path, new Definitions(schema, []));

    private static JsonGrammarNode Compile(JsonElement schema, string path, Definitions defs)
    {
        if (schema.ValueKind == JsonValueKind.True) return AnyValueNode.Instance;
        if (schema.ValueKind != JsonValueKind.Object) throw new ArgumentException($"{path}: a schema must be an object, got {schema.ValueKind}");
        foreach (var p in schema.EnumerateObject())
            if (!Annotations.Contains(p.Name) && p.Name is not ("type" or "properties" or "required" or "additionalProperties" or "items" or "enum" or "const"
                or "anyOf" or "$ref" or "$defs" or "definitions"))
                throw new ArgumentException($"{path}: the keyword '{p.Name}' is not supported by constrained decoding (supported: type, properties, required, " +
                    "additionalProperties: false, items, enum, const, anyOf, $ref to $defs)");
        if (schema.TryGetProperty("$ref", out var reference)) return Reference(schema, reference, path, defs);
        if (schema.TryGetProperty("const", out var constant)) return Literal([constant], path + ".const");
        if (schema.TryGetProperty("enum", out var values))
        {
            if (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0) throw new ArgumentException($"{path}.enum: must be a non-empty array");
            return Literal([.. values.EnumerateArray()], path + ".enum");
        }
        if (schema.TryGetProperty("anyOf", out var anyOf))
        {
            if (anyOf.ValueKind != JsonValueKind.Array || anyOf.GetArrayLength() == 0) throw new ArgumentException($"{path}.anyOf: must be a non-empty array");
            return Union([.. anyOf.EnumerateArray().Select((s, i) => Compile(s, $"{path}.anyOf[{i}]", defs))], path + ".anyOf");
        }
        if (!schema.TryGetProperty("type", out var type))
        {
            if (schema.TryGetProperty("properties", out _)) return Typed("object", schema, path, defs);
            return AnyValueNode.Instance;                           // {} (or annotations only): any value
        }
        if (type.ValueKind == JsonValueKind.String) return Typed(type.GetString()!, schema, path, defs);
        if (type.ValueKind != JsonValueKind.Array || type.GetArrayLength() == 0) throw new ArgumentException($"{path}.type: must be a type name or a non-empty array of them");
        return Union([.. type.EnumerateArray().Select(t => t.ValueKind == JsonValueKind.String
            ? Typed(t.GetString()!, schema, path, defs)
            : throw new ArgumentException($"{path}.type: '{t}' is not a type name"))], path + ".type");
    }

    /// <summary>The definitions a schema's <c>$ref</c>s point into (its root), and the references being compiled (a cycle is refused).</summary>
    private sealed record Definitions(JsonElement Root, HashSet<string> Resolving);

    /// <summary>
    /// <c>"$ref": "#/$defs/Name"</c> (or <c>#/definitions/Name</c>, Pydantic's and older generators' place): the definition compiled in
    /// place, beside annotations only. A definition that refers back to itself is refused: a recursive schema would need a
    /// grammar without a bound on its depth's description.
    /// </summary>
    private static JsonGrammarNode Reference(JsonElement schema, JsonElement reference, string path, Definitions defs)
    {
        foreach (var p in schema.EnumerateObject())
            if (p.Name != "$ref" && !Annotations.Contains(p.Name) && p.Name is not ("$defs" or "definitions"))
                throw new ArgumentException($"{path}: '{p.Name}' beside $ref is not supported (the reference is compiled alone)");
        string target = reference.ValueKind == JsonValueKind.String ? reference.GetString()! : throw new ArgumentException($"{path}.$ref: must be a string");
        string[] parts = target.Split('/');
        if (parts.Length != 3 || parts[0] != "#" || parts[1] is not ("$defs" or "definitions"))
            throw new ArgumentException($"{path}.$ref: '{target}' is not supported (only #/$defs/Name and #/definitions/Name)");
        if (!defs.Root.TryGetProperty(parts[1], out var container) || container.ValueKind != JsonValueKind.Object || !container.TryGetProperty(parts[2], out var definition))
            throw new ArgumentException($"{path}.$ref: '{target}' names no definition of the schema");
        if (!defs.Resolving.Add(target)) throw new ArgumentException($"{path}.$ref: '{target}' refers back to itself; recursive schemas are not supported");
        try
        {
            return Compile(definition, target, defs);
        }
        finally { defs.Resolving.Remove(target); }
    }

    private static JsonGrammarNode Typed(string type, JsonElement schema, string path, Definitions defs)
    {
        switch (type)
        {
            case "string": return StringNode.Instance;
            case "number": return new NumberNode(integer: false);
            case "integer": return new NumberNode(integer: true);
            case "boolean": return new LiteralNode([[.. "true"u8], [.. "false"u8]]);
            case "null": return new LiteralNode([[.. "null"u8]]);
            case "array":
                return new ArrayNode(schema.TryGetProperty("items", out var items) ? Compile(items, path + ".items", defs) : AnyValueNode.Instance);
            case "object":
                if (schema.TryGetProperty("additionalProperties", out var extra) && extra.ValueKind != JsonValueKind.False)
                    throw new ArgumentException($"{path}.additionalProperties: only false is supported (constrained decoding writes the declared properties only)");
                var required = new HashSet<string>(StringComparer.Ordinal);
                if (schema.TryGetProperty("required", out var req))
                    foreach (var r in req.EnumerateArray()) required.Add(r.GetString() ?? throw new ArgumentException($"{path}.required: names must be strings"));
                if (!schema.TryGetProperty("properties", out var props)) return required.Count == 0 && !schema.TryGetProperty("additionalProperties", out _)
                    ? AnyObjectNode.Instance : new ObjectNode([]);
                var properties = new List<JsonGrammarProperty>();
                foreach (var p in props.EnumerateObject())
                {
                    var key = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(p.Name, Relaxed));
                    properties.Add(new JsonGrammarProperty(key, Compile(p.Value, $"{path}.properties.{p.Name}", defs), required.Remove(p.Name)));
                }
                if (required.Count > 0) throw new ArgumentException($"{path}.required: '{required.First()}' is not among the properties");
                if (properties.Count > MaxAlternatives) throw new ArgumentException($"{path}.properties: at most {MaxAlternatives} properties an object");
                return new ObjectNode(properties);
            default: throw new ArgumentException($"{path}.type: '{type}' is not a JSON schema type");
        }
    }

    private static LiteralNode Literal(IReadOnlyList<JsonElement> values, string path)
    {
        if (values.Count > MaxAlternatives) throw new ArgumentException($"{path}: at most {MaxAlternatives} values");
        var alternatives = new List<byte[]>();
        foreach (var v in values)
        {
            if (v.ValueKind is JsonValueKind.Object or JsonValueKind.Array)
                throw new ArgumentException($"{path}: only strings, numbers, booleans and null are supported as values");
            var text = v.ValueKind == JsonValueKind.String ? JsonSerializer.Serialize(v.GetString(), Relaxed) : v.GetRawText();
            var bytes = Encoding.UTF8.GetBytes(text);
            if (!alternatives.Any(a => a.AsSpan().SequenceEqual(bytes))) alternatives.Add(bytes);
        }
        return new LiteralNode(alternatives);
    }

    /// <summary>
    /// Members that begin with different bytes, so the first byte of the value picks one; integer beside number becomes
    /// number, and literals merge into one literal.
    /// </summary>
    private static JsonGrammarNode Union(IReadOnlyList<JsonGrammarNode> members, string path)
    {
        var list = members.SelectMany(m => m is UnionNode u ? u.Members : [m]).ToList();
        if (list.Any(m => m is AnyValueNode)) return AnyValueNode.Instance;
        if (list.Any(m => m is NumberNode { Integer: false })) list.RemoveAll(m => m is NumberNode { Integer: true });
        var literals = list.OfType<LiteralNode>().ToList();
        if (literals.Count > 1)
        {
            list.RemoveAll(m => m is LiteralNode);
            list.Add(new LiteralNode([.. literals.SelectMany(l => l.Alternatives)]));
        }
        for (int b = 0; b < 256; b++)
            if (list.Count(m => m.MayStartWith((byte)b)) > 1)
                throw new ArgumentException($"{path}: its members can begin with the same character '{(char)b}' (two objects, two arrays, a string " +
                    "beside a string enum...), which constrained decoding cannot tell apart");
        return list.Count == 1 ? list[0] : new UnionNode(list);
    }
}
