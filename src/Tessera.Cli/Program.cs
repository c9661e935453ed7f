using Tessera.Cli;
using Tessera.Cli.Commands;

// tessera: train, generate, serve, prepare, launch, bench, info. Errors print one message and a non-zero exit code;
// no command leaves partial files behind (checkpoints and shards are written atomically).
const string usage = """
    tessera COMMAND [options]
      train      train a model (no options: the embedded default, a tiny GPT-2 on the SDK's API docs)
      generate   continue a prompt from a checkpoint or a Hugging Face model directory
      serve      an OpenAI-compatible HTTP server (continuous batching, paged KV cache)
      prepare    tokenize text files into llm.c token shards
      launch     start one process per GPU (torchrun-style) running a command
      bench      time training steps or generation on the CPU or a GPU (bench train, bench generate)
      info       list model presets
    'tessera COMMAND --help' describes a command's options.
    """;

if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
{
    Console.WriteLine(usage);
    return args.Length == 0 ? 2 : 0;
}

var command = args[0];
var rest = new CommandLineArguments(args[1..]);
(Func<CommandLineArguments, TextWriter, int> run, string help) = command switch
{
    "train" => ((Func<CommandLineArguments, TextWriter, int>)TrainCommand.Run, TrainCommand.Usage),
    "generate" => (GenerateCommand.Run, GenerateCommand.Usage),
    "serve" => (ServeCommand.Run, ServeCommand.Usage),
    "prepare" => (PrepareCommand.Run, PrepareCommand.Usage),
    "info" => (InfoCommand.Run, InfoCommand.Usage),
    "launch" => (LaunchCommand.Run, LaunchCommand.Usage),
    "bench" => (BenchCommand.Run, BenchCommand.Usage),
    _ => (null!, ""),
};
if (run is null)
{
    Console.Error.WriteLine($"tessera: unknown command '{command}'\n{usage}");
    return 2;
}
if (rest.Flag("help") || rest.Flag("h"))
{
    Console.WriteLine(help);
    return 0;
}

try
{
    return run(rest, Console.Out);
}
catch (UsageException e)
{
    Console.Error.WriteLine($"tessera {command}: {e.Message}\n\n{help}");
    return 2;
}
catch (OperationCanceledException)
{
    Console.Error.WriteLine($"tessera {command}: cancelled");
    return 130;
}
catch (Exception e)
{
    // Every failure reaches the user as one line naming what went wrong; TESSERA_DEBUG=1 adds the stack.
    Console.Error.WriteLine($"tessera {command}: error: {e.Message}");
    if (Environment.GetEnvironmentVariable("TESSERA_DEBUG") == "1") Console.Error.WriteLine(e);
    return 1;
}
