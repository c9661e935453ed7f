using Tessera.Models.Tokenization;

namespace Tessera.Training.Data;

/// <summary>
/// Tokenizes a corpus (plain text files, jsonl files of {"text": ...}) into llm.c token shards, as llm.c's data scripts do:
/// every document is preceded by a delimiter token (the tokenizer's beginning-of-sequence token where it has one, Llama's
/// &lt;|begin_of_text|&gt; or &lt;s&gt;; else its end-of-text token, GPT-2's &lt;|endoftext|&gt;; none for byte tokens),
/// the last <see cref="ShardPreparationOptions.ValidationFraction"/> of the tokens go to val_000.bin, and the shard width
/// follows the vocabulary (uint32 above 65,536 entries). Every input is read and checked before any shard is written, so bad
/// input (a missing file, a jsonl line without text) writes nothing.
/// </summary>
public static class ShardPreparation
{
    /// <summary>Writes the shards of <paramref name="files"/> (in order) and returns each written path with its token count.</summary>
    /// <exception cref="FileNotFoundException">A file does not exist.</exception>
    /// <exception cref="InvalidDataException">A jsonl line is malformed (the message names file, line and field).</exception>
    public static List<(string Path, int Count)> Prepare(IReadOnlyList<string> files, ITokenizer tokenizer, ShardPreparationOptions options,
        IProgress<PrepareProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(files);
        ArgumentNullException.ThrowIfNull(tokenizer);
        options.Validate();
        if (files.Count == 0) throw new ArgumentException("ShardPreparation: no corpus files given");
        foreach (var f in files)
            if (!File.Exists(f)) throw new FileNotFoundException($"{f}: no such corpus file", f);
        var format = options.Format ?? TokenShard.FormatFor(tokenizer.VocabSize);
        if (format == TokenShardFormat.Uint16 && tokenizer.VocabSize > ushort.MaxValue + 1)
            throw new ArgumentException($"ShardPreparation: the tokenizer has {tokenizer.VocabSize} tokens, more than uint16 shards hold (65,536); use TokenShardFormat.Uint32");
        int? delimiter = tokenizer.BeginOfSequenceId ?? tokenizer.EndOfTextId;

        long total = files.Sum(f => new FileInfo(f).Length), read = 0, documents = 0;
        var tokens = new List<int>();
        foreach (var file in files)
        {
            foreach (var doc in TextCorpus.Read(file, options.TextField, n => read += n))
            {
                if (delimiter is int d) tokens.Add(d);
                tokens.AddRange(tokenizer.Encode(doc.Text));
                documents++;
                progress?.Report(new PrepareProgress(read, total, documents, tokens.Count));
            }
        }
        if (tokens.Count == 0) throw new InvalidDataException($"ShardPreparation: the corpus ({string.Join(", ", files)}) holds no text");
        progress?.Report(new PrepareProgress(total, total, documents, tokens.Count));
        return ShardWriter.WriteSplit(tokens, options.OutputDirectory, options.ValidationFraction, options.ShardTokens, format);
    }
}
