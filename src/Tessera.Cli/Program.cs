using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;

// tessera: the edge of the system. The environment is read here (CI, TESSERA_DEBUG) and nowhere below.
var terminal = Terminal.ForProcess(ci: !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CI")));
return TesseraCli.Run(args, terminal, debug: Environment.GetEnvironmentVariable("TESSERA_DEBUG") == "1");
