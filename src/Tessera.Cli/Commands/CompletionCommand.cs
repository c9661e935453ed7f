using System.CommandLine;
using Tessera.Cli.Output;

namespace Tessera.Cli.Commands;

/// <summary>
/// tessera completion bash|zsh: prints a script that makes the shell complete tessera's commands, options and values by
/// asking tessera itself (System.CommandLine's [suggest] directive), so the completions never drift from the parser.
/// </summary>
public sealed class CompletionCommand : Command
{
    private readonly Argument<string> _shell = new("SHELL") { Description = "bash or zsh" };

    /// <summary>Declares the command.</summary>
    public CompletionCommand(Terminal terminal) : base("completion", "print a shell completion script: eval \"$(tessera completion bash)\" in ~/.bashrc")
    {
        _shell.AcceptOnlyFromAmong("bash", "zsh");
        Arguments.Add(_shell);
        SetAction(parse =>
        {
            terminal.Output.Write(parse.GetValue(_shell) == "zsh" ? Zsh : Bash);
            return 0;
        });
    }

    // The line so far and the cursor position go to "tessera [suggest:N] LINE"; its lines are the candidates.
    private const string Bash = """
        _tessera_complete() {
            local IFS=$'\n'
            COMPREPLY=($(compgen -W "$(tessera "[suggest:${COMP_POINT}]" "${COMP_LINE}" 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
        }
        complete -o default -F _tessera_complete tessera

        """;

    private const string Zsh = """
        _tessera_complete() {
            local -a candidates
            candidates=("${(@f)$(tessera "[suggest:${CURSOR}]" "${BUFFER}" 2>/dev/null)}")
            compadd -- $candidates
        }
        compdef _tessera_complete tessera

        """;
}
