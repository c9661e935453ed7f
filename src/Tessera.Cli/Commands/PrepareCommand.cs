using Tessera.Models.Tokenization;
using Tessera.Training.Data;

namespace Tessera.Cli.Commands;

/// <summary>tessera prepare: tokenizes text and jsonl files into llm.c token shards (<see cref="ShardPreparation"/>).</summary>
internal static class PrepareCommand
{
    public const string Usage = """
        tessera prepare --out DIR [--tokenizer byte|HF_DIR] [--val-fraction 0.1] [--shard-tokens 100000000] FILE...
          Tokenizes the FILEs (in order: *.jsonl one {"text": ...} object per line, anything else plain UTF-8 text,
          one document per file), each document after the tokenizer's BOS (or end-of-text) token, and writes
          DIR/train_NNN.bin and DIR/val_000.bin in llm.c's shard format: uint16 tokens, or uint32 (llm.c's Llama 3
          format) when the vocabulary has more than 65536 entries.
        """;

    public static int Run(CommandLineArguments args, TextWriter output)
    {
        string outDir = args.String("out") ?? throw new UsageException("prepare needs --out DIR");
        string tokenizerSpec = args.String("tokenizer", "byte")!;
        double valFraction = args.Double("val-fraction", 0.1);
        int shardTokens = args.Int("shard-tokens", 100_000_000);
        args.ThrowOnUnknown("prepare");
        if (args.Positional.Count == 0) throw new UsageException("prepare needs at least one text FILE");
        if (valFraction is < 0 or >= 1) throw new UsageException($"--val-fraction ({valFraction}) must lie in [0, 1)");
        if (shardTokens <= 0) throw new UsageException($"--shard-tokens ({shardTokens}) must be positive");
        foreach (var f in args.Positional)
            if (!File.Exists(f)) throw new FileNotFoundException($"{f}: no such text file");

        var tokenizer = TokenizerFactory.Create(tokenizerSpec);
        var options = new ShardPreparationOptions { OutputDirectory = outDir, ValidationFraction = valFraction, ShardTokens = shardTokens };
        var written = ShardPreparation.Prepare(args.Positional, tokenizer, options);
        foreach (var (path, count) in written) output.WriteLine($"wrote {path} ({count:N0} tokens)");
        return 0;
    }
}
