using System.CommandLine;
using Spectre.Console;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Training.Data;

namespace Tessera.Cli.Commands;

/// <summary>
/// tessera prepare: tokenizes text and jsonl files into llm.c token shards (<see cref="ShardPreparation"/>), with a
/// progress bar over the input bytes on a terminal.
/// </summary>
public sealed class PrepareCommand : Command
{
    private readonly Argument<string[]> _files = new("FILE")
    {
        Description = "corpus files, in order: *.jsonl holds one {\"text\": ...} object per line, anything else is plain UTF-8 text, one document per file; " +
            "each document follows the tokenizer's BOS (or end-of-text) token",
        Arity = ArgumentArity.OneOrMore,
    };
    private readonly Option<string> _out = new("--out") { Description = "directory for train_NNN.bin and val_000.bin (uint16 tokens, or uint32 above 65,536 vocabulary entries)", HelpName = "DIR", Required = true };
    private readonly Option<string> _tokenizer = SharedOptions.Tokenizer("tokenizer: byte, or a Hugging Face directory with tokenizer files");
    private readonly Option<double> _valFraction = SharedOptions.Double("--val-fraction", "X", "fraction of the tokens (the last ones) for val_000.bin", 0.1, min: 0, max: 0.999);
    private readonly Option<int> _shardTokens = SharedOptions.Int("--shard-tokens", "N", "tokens per training shard at most", 100_000_000, min: 1);

    /// <summary>Declares the command.</summary>
    public PrepareCommand(Terminal terminal) : base("prepare", "tokenize text or jsonl files into llm.c token shards")
    {
        Arguments.Add(_files);
        foreach (var o in new Option[] { _out, _tokenizer, _valFraction, _shardTokens }) Options.Add(o);
        SetAction(parse => Run(parse, terminal));
    }

    private int Run(ParseResult parse, Terminal terminal)
    {
        var files = parse.GetValue(_files)!;
        foreach (var f in files)
            if (!File.Exists(f)) throw new UsageException($"FILE {f}: no such file");
        var tokenizer = TokenizerFactory.Create(parse.GetValue(_tokenizer)!);
        var options = new ShardPreparationOptions
        {
            OutputDirectory = parse.GetValue(_out)!, ValidationFraction = parse.GetValue(_valFraction), ShardTokens = parse.GetValue(_shardTokens),
        };

        List<(string Path, int Count)> written = [];
        if (terminal.Interactive)
            terminal.Console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(),
                    new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(context =>
                {
                    var task = context.AddTask($"tokenizing {files.Length} file(s)", maxValue: Math.Max(1, files.Sum(f => new FileInfo(f).Length)));
                    written = ShardPreparation.Prepare(files, tokenizer, options, new Progress(p =>
                    {
                        task.Value = p.BytesRead;
                        task.Description = $"tokenizing: {p.Documents:N0} documents, {p.Tokens:N0} tokens";
                    }));
                });
        else written = ShardPreparation.Prepare(files, tokenizer, options);
        foreach (var (path, count) in written) terminal.Line($"wrote {path} ({count:N0} tokens)");
        return 0;
    }

    // Synchronous: System.Progress<T> would post to the thread pool and report after the bar has closed.
    private sealed class Progress(Action<PrepareProgress> report) : IProgress<PrepareProgress>
    {
        public void Report(PrepareProgress value) => report(value);
    }
}
