using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Tessera.Inference.Constraints;
using Tessera.Models.Tokenization;

namespace Tessera.Bench.Serving;

/// <summary>
/// What constrained decoding costs a step on the host: with a real tokenizer's vocabulary, the time to check every token
/// against a JSON grammar (the full check that top-k and top-p sampling, and a rejection run past its limit, make) at a few
/// places in a document, and how many tokens pass.
/// <para>Usage: constrained [--tokenizer DIR|cl100k] [--repeat 5]; cl100k (the default) is cl100k_base's 100,256 tokens, from the
/// Microsoft.ML.Tokenizers.Data.Cl100kBase package, written to a temporary directory as a tiktoken file.</para>
/// </summary>
public static class ConstrainedBench
{
    public static int Run(string[] args)
    {
        string dir = "cl100k";
        int repeat = 5;
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--tokenizer": dir = args[++i]; break;
                case "--repeat": repeat = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"constrained: unknown argument '{args[i]}'");
            }
        var tokenizer = dir == "cl100k" ? Cl100k() : TokenizerLoader.FromDirectory(dir);
        var schema = JsonDocument.Parse("""
            {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
             "required": ["name", "age", "tags"]}
            """).RootElement;
        var grammar = JsonGrammar.FromSchema(schema);
        var vocabulary = new TokenVocabulary(tokenizer);
        Console.WriteLine($"constrained: {dir}, {tokenizer.VocabSize} tokens; median of {repeat}");
        Console.WriteLine();
        Console.WriteLine("| place in the document | tokens allowed | every token checked, ms | through the token trie, ms |");
        Console.WriteLine("|---|---:|---:|---:|");
        foreach (var (place, prefix) in new[] { ("start", ""), ("a key", "{\"na"), ("a string", "{\"name\":\"Ada Lo"), ("a number", "{\"name\":\"x\",\"age\":4"), ("an array", "{\"name\":\"x\",\"age\":4,\"tags\":[") })
        {
            var r = grammar.Start();
            r.Advance(System.Text.Encoding.UTF8.GetBytes(prefix));
            int allowed = 0;
            var each = Median(repeat, () =>
            {
                allowed = 0;
                for (int t = 0; t < tokenizer.VocabSize; t++) if (r.Accepts(tokenizer.TokenBytes(t))) allowed++;
            });
            var mask = new bool[tokenizer.VocabSize];
            var trie = Median(repeat, () => vocabulary.Allowed(r, mask));
            int trieAllowed = mask.Count(x => x);
            if (trieAllowed != allowed) throw new InvalidOperationException($"{place}: the trie allows {trieAllowed} tokens, the token-by-token check {allowed}");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {place} (`{prefix}`) | {allowed:N0} | {each:F1} | {trie:F1} |"));
        }
        return 0;
    }

    /// <summary>cl100k_base from its data package (the ranks file, deflated, as an embedded resource), loaded as a tiktoken file.</summary>
    private static ITokenizer Cl100k()
    {
        var assembly = System.Reflection.Assembly.Load("Microsoft.ML.Tokenizers.Data.Cl100kBase");
        var name = assembly.GetManifestResourceNames().Single(n => n.EndsWith("cl100k_base.tiktoken.deflate", StringComparison.Ordinal));
        var dir = Directory.CreateTempSubdirectory("tessera-cl100k-").FullName;
        var path = Path.Combine(dir, "cl100k_base.tiktoken");
        // The package keeps one base64 token a line after a "Capacity: N" line, the rank being the line's place; a tiktoken
        // file says "base64 rank".
        using (var resource = assembly.GetManifestResourceStream(name)!)
        using (var inflate = new System.IO.Compression.DeflateStream(resource, System.IO.Compression.CompressionMode.Decompress))
        using (var reader = new StreamReader(inflate))
        using (var file = new StreamWriter(path))
        {
            int rank = 0;
            for (string? line; (line = reader.ReadLine()) is not null;)
                if (line.Length > 0 && !line.StartsWith("Capacity:", StringComparison.Ordinal)) file.WriteLine($"{line} {rank++}");
        }
        return TiktokenFileTokenizer.FromFile(path);
    }

    private static double Median(int repeat, Action op)
    {
        var times = new double[repeat];
        for (int i = 0; i < repeat; i++)
        {
            var clock = Stopwatch.StartNew();
            op();
            times[i] = clock.Elapsed.TotalMilliseconds;
        }
        Array.Sort(times);
        return times[repeat / 2];
    }
}
