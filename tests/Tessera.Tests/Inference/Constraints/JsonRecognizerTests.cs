using System.Text;
using System.Text.Json;
using Tessera.Inference.Constraints;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference.Constraints;

/// <summary>
/// The JSON grammars of constrained decoding, byte by byte: documents they must take whole, documents they must refuse (and
/// where), the schema subset and its refusals, and random walks through what a grammar allows, each of which must end in a
/// document System.Text.Json parses and the schema's shape holds.
/// </summary>
public class JsonRecognizerTests
{
    private const string PersonSchema = """
        {"type": "object", "properties": {
            "name": {"type": "string", "description": "ignored"},
            "age": {"type": "integer"},
            "height": {"type": ["number", "null"]},
            "kind": {"enum": ["cat", "dog", 3, true]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "home": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}, "required": ["city"], "additionalProperties": false},
            "ok": {"type": "boolean"}},
          "required": ["name", "age", "tags"], "additionalProperties": false}
        """;

    private static JsonGrammar Person() => JsonGrammar.FromSchema(JsonDocument.Parse(PersonSchema).RootElement, "person");

    /// <summary>How many bytes of <paramref name="text"/> the grammar takes one at a time, and whether it ends complete.</summary>
    private static (int Taken, bool Complete) Feed(JsonGrammar grammar, string text)
    {
        var r = grammar.Start();
        var bytes = Encoding.UTF8.GetBytes(text);
        for (int i = 0; i < bytes.Length; i++)
        {
            if (!r.Accepts(bytes.AsSpan(i, 1))) return (i, false);
            r.Advance(bytes.AsSpan(i, 1));
        }
        return (bytes.Length, r.IsComplete);
    }

    [Theory]
    [InlineData("""{}""")]
    [InlineData("""{"a":1}""")]
    [InlineData("""{"a":[1,-2.5e+3,0,"x",true,false,null,{"b":{}}],"c":"\u00e9\n\"ü"}""")]
    [InlineData("""{"":[[],[[]]]}""")]
    [InlineData(""" {"a" : [ 1 , 2 ], "b": { } }""")]   // a space in any gap
    public void JsonObjectModeTakesObjects(string text)
    {
        Assert.Equal((Encoding.UTF8.GetByteCount(text), true), Feed(JsonGrammar.AnyObject(), text));
    }

    [Theory]
    [InlineData("""[1]""", 0)]                // the root must be an object
    [InlineData("""{"a":1,}""", 7)]           // trailing comma
    [InlineData("""{a:1}""", 1)]              // unquoted key
    [InlineData("""{"a":01}""", 6)]           // leading zero
    [InlineData("""{"a":1.}""", 7)]           // a point needs digits
    [InlineData("""{"a":tru}""", 8)]
    [InlineData("""{"a":"\x"}""", 7)]         // not an escape
    [InlineData("""{"a":1}}""", 7)]           // nothing after the value
    [InlineData("""{"a":1} """, 7)]           // not even whitespace
    [InlineData("""{"a":t rue}""", 6)]        // no whitespace inside a token of the syntax
    [InlineData("""{"a":  1}""", 6)]          // at most one space in a gap
    [InlineData("{\n\"a\":1}", 1)]             // and no newline
    public void JsonObjectModeRefusesAtTheFirstWrongByte(string text, int at)
    {
        Assert.Equal((at, false), Feed(JsonGrammar.AnyObject(), text));
    }

    [Fact]
    public void AStringMayNotHoldAControlCharacterAndTheTokenIsCheckedWhole()
    {
        var r = JsonGrammar.AnyObject().Start();
        r.Advance("{\"a\":\""u8);
        Assert.False(r.Accepts("x\ny"u8));
        Assert.True(r.Accepts("x\\ny\""u8));
        Assert.False(r.Accepts(ReadOnlySpan<byte>.Empty));    // an empty token (end of text) only once complete
        r.Advance("x\"}"u8);
        Assert.True(r.IsComplete);
        Assert.True(r.Accepts(ReadOnlySpan<byte>.Empty));
        Assert.False(r.Accepts(" "u8));
    }

    [Theory]
    [InlineData("""{"name":"Ada","age":36,"tags":[]}""")]
    [InlineData("""{"name":"Ada","age":-3,"height":1.75,"kind":"dog","tags":["a","b"],"home":{"city":"Paris","zip":75001},"ok":false}""")]
    [InlineData("""{"name":"","age":0,"height":null,"kind":3,"tags":[""],"home":{"city":"x"}}""")]
    [InlineData("""{"name":"x","age":1,"kind":true,"tags":[]}""")]
    [InlineData("""{ "name": "x", "age" : 1, "tags": [ "a" ] }""")]
    public void ASchemaTakesItsDocuments(string text)
    {
        Assert.Equal((Encoding.UTF8.GetByteCount(text), true), Feed(Person(), text));
    }

    [Theory]
    [InlineData("""{"age":1""", 2)]                                       // "name" is required and comes first
    [InlineData("""{"name":"x","age":1.5""", 19)]                         // an integer has no fraction
    [InlineData("""{"name":"x","age":1,"kind":"cow""", 29)]                // not in the enum ("c" may begin "cat")
    [InlineData("""{"name":"x","age":1,"tags":[1]""", 28)]                 // items are strings
    [InlineData("""{"name":"x","age":1}""", 19)]                           // "tags" is required
    [InlineData("""{"name":"x","age":1,"tags":[],"extra":1""", 31)]        // no other property
    [InlineData("""{"name":"x","age":1,"tags":[],"home":{"zip":1""", 39)]  // "city" is required
    [InlineData("""{"age":1,"name":"x""", 2)]                             // properties in their declared order
    public void ASchemaRefusesWhatBreaksIt(string text, int at)
    {
        Assert.Equal((at, false), Feed(Person(), text));
    }

    /// <summary>References into $defs (Pydantic's form for nested models) are compiled in place.</summary>
    [Fact]
    public void ReferencesToDefinitionsAreCompiledInPlace()
    {
        var grammar = JsonGrammar.FromSchema(JsonDocument.Parse("""
            {"$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "title": "Address"}},
             "type": "object", "properties": {"home": {"$ref": "#/$defs/Address"}, "work": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]}},
             "required": ["home", "work"], "title": "Person"}
            """).RootElement);
        Assert.Equal((33, true), Feed(grammar, """{"home":{"city":"x"},"work":null}"""));
        Assert.Equal((10, false), Feed(grammar, """{"home":{"town":"x"}}"""));   // "city" is the only key
    }

    [Theory]
    [InlineData("""{"type": "array"}""", "root must be an object")]
    [InlineData("""{"type": "object", "properties": {"a": {"$ref": "#/$defs/Node"}}, "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}}""", "refers back to itself")]
    [InlineData("""{"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}""", "names no definition")]
    [InlineData("""{"type": "object", "properties": {"a": {"$ref": "https://example.com/x.json"}}}""", "only #/$defs/Name")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}""", "'pattern'")]
    [InlineData("""{"type": "object", "properties": {"a": {"$ref": "#/x"}}}""", "only #/$defs/Name")]
    [InlineData("""{"type": "object", "additionalProperties": true}""", "additionalProperties")]
    [InlineData("""{"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"enum": ["x"]}]}}}""", "same character '\"'")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "date"}}}""", "'date' is not a JSON schema type")]
    [InlineData("""{"type": "object", "properties": {}, "required": ["a"]}""", "'a' is not among the properties")]
    public void ASchemaOutsideTheSubsetIsRefusedNamingWhy(string schema, string message)
    {
        var e = Assert.Throws<ArgumentException>(() => JsonGrammar.FromSchema(JsonDocument.Parse(schema).RootElement));
        Assert.Contains(message, e.Message);
    }

    /// <summary>
    /// Random walks: from the start, a byte drawn from a small alphabet among those the grammar allows (any allowed ASCII byte
    /// where none of the alphabet is), until the document is
    /// complete; each must parse, and under the schema hold its shape. A walk that passes 4,000 bytes (a long string) is dropped.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EveryCompletedWalkIsAValidDocument(bool schema)
    {
        var rng = TestRandom.Create();
        var grammar = schema ? Person() : JsonGrammar.AnyObject();
        var alphabet = Encoding.ASCII.GetBytes("{}[]:,\"\\-+.eE0123456789abcdefnrtulsu ");
        int completed = 0;
        for (int walk = 0; walk < 300; walk++)
        {
            var r = grammar.Start();
            var text = new List<byte>();
            while (!r.IsComplete && text.Count < 4000)
            {
                // The alphabet where it may go on (so strings end and numbers stay short), else any ASCII byte allowed (a key's letters).
                var allowed = alphabet.Where(b => r.Accepts([b])).ToArray();
                if (allowed.Length == 0) allowed = Enumerable.Range(0x20, 0x5f).Select(i => (byte)i).Where(b => r.Accepts([b])).ToArray();
                Assert.True(allowed.Length > 0, "stuck after " + Encoding.UTF8.GetString(text.ToArray()));   // the grammar never leaves a walk with no way on
                var b = allowed[rng.Next(allowed.Length)];
                r.Advance([b]);
                text.Add(b);
            }
            if (!r.IsComplete) continue;
            completed++;
            using var doc = JsonDocument.Parse(text.ToArray());
            var root = doc.RootElement;
            Assert.Equal(JsonValueKind.Object, root.ValueKind);
            if (!schema) continue;
            Assert.Equal(JsonValueKind.String, root.GetProperty("name").ValueKind);
            Assert.True(root.GetProperty("age").TryGetInt64(out _), $"age: {root.GetProperty("age")}");
            Assert.All(root.GetProperty("tags").EnumerateArray(), t => Assert.Equal(JsonValueKind.String, t.ValueKind));
            if (root.TryGetProperty("kind", out var kind)) Assert.Contains(kind.GetRawText(), new[] { "\"cat\"", "\"dog\"", "3", "true" });
            if (root.TryGetProperty("home", out var home)) Assert.Equal(JsonValueKind.String, home.GetProperty("city").ValueKind);
            Assert.True(root.EnumerateObject().All(p => p.Name is "name" or "age" or "height" or "kind" or "tags" or "home" or "ok"));
        }
        Assert.True(completed > 100, $"only {completed} of 300 walks completed");
    }
}
