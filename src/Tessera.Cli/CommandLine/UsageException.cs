namespace Tessera.Cli.CommandLine;

/// <summary>The command line is wrong; the message names the option and says how. Exits with <see cref="ExitCodes.Usage"/>.</summary>
public sealed class UsageException(string message) : Exception(message);
