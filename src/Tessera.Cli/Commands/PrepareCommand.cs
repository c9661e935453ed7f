using System.CommandLine;
using Spectre.Console;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Training.Data;

namespace Tessera.Cli.Commands;

/// <summary>tessera prepare: tokenizes text files into llm.c token shards (train_NNN.bin, val_000.bin).</summary>
public sealed class PrepareCommand : Command
{
    private readonly Argument<string[]> _files = new("FILE") { Description = "text files, tokenized in order (an end-of-text token after each when the tokenizer has one)", Arity = ArgumentArity.OneOrMore };
    private readonly Option<string> _out = new("--out") { Description = "directory for the shards", HelpName = "DIR", Required = true };
    private readonly Option<string> _tokenizer = SharedOptions.Tokenizer("tokenizer: byte, or a Hugging Face directory with tokenizer files");
    private readonly Option<double> _valFraction = SharedOptions.Double("--val-fraction", "X", "fraction of the tokens (the last ones) for val_000.bin", 0.1, min: 0, max: 0.999);
    private readonly Option<int> _shardTokens = SharedOptions.Int("--shard-tokens", "N", "tokens per training shard at most", 100_000_000, min: 1);

    /// <summary>Declares the command.</summary>
    public PrepareCommand(Terminal terminal) : base("prepare", "tokenize text files into llm.c token shards")
    {
        Arguments.Add(_files);
        foreach (var o in new Option[] { _out, _tokenizer, _valFraction, _shardTokens }) Options.Add(o);
        SetAction(parse => Run(parse, terminal));
    }

    private int Run(ParseResult parse, Terminal terminal)
    {
        var files = parse.GetValue(_files)!;
        foreach (var f in files)
            if (!File.Exists(f)) throw new UsageException($"FILE {f}: no such text file");
        var tokenizer = TokenizerFactory.Create(parse.GetValue(_tokenizer)!);
        if (tokenizer.VocabSize > 65536)
            throw new UsageException($"--tokenizer has {tokenizer.VocabSize} tokens; llm.c shards store uint16 tokens (at most 65536)");

        var tokens = new List<int>();
        long totalBytes = files.Sum(f => new FileInfo(f).Length);
        void Tokenize(Action<long>? advance)
        {
            foreach (var f in files)
            {
                tokens.AddRange(tokenizer.Encode(File.ReadAllText(f)));
                if (tokenizer.EndOfTextId is int eot) tokens.Add(eot);
                advance?.Invoke(new FileInfo(f).Length);
            }
        }
        if (terminal.Interactive)
            terminal.Console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(),
                    new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(context =>
                {
                    var task = context.AddTask($"tokenizing {files.Length} file(s)", maxValue: Math.Max(1, totalBytes));
                    Tokenize(bytes => task.Increment(bytes));
                });
        else Tokenize(null);

        // Nothing to write is an error, not a silent success: an empty corpus trains nothing.
        if (tokens.Count == 0 || tokens.All(t => t == tokenizer.EndOfTextId))
            throw new InvalidDataException($"{string.Join(", ", files)}: no text ({totalBytes} bytes): nothing to tokenize, no shard written");
        var written = ShardWriter.WriteSplit(tokens, parse.GetValue(_out)!, parse.GetValue(_valFraction), parse.GetValue(_shardTokens));
        foreach (var (path, count) in written) terminal.Line($"wrote {path} ({count:N0} tokens)");
        return 0;
    }
}
