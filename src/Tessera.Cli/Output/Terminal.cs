using Spectre.Console;

namespace Tessera.Cli.Output;

/// <summary>
/// Where a command writes: standard output as a Spectre.Console console, and standard error for diagnostics. Rich
/// (colours, live progress bars) only when standard output is a terminal and the CI variable is unset; otherwise plain
/// lines that a log file, a pipe or a test can read, with tables kept whole (no wrapping at 80 columns).
/// </summary>
public sealed class Terminal
{
    private Terminal(IAnsiConsole console, TextWriter output, TextWriter error, bool interactive)
    {
        Console = console;
        Output = output;
        Error = error;
        Interactive = interactive;
    }

    /// <summary>Standard output, for tables, markup and progress.</summary>
    public IAnsiConsole Console { get; }

    /// <summary>Standard output as plain text (generated text, lines that scripts parse).</summary>
    public TextWriter Output { get; }

    /// <summary>Standard error: notes and errors.</summary>
    public TextWriter Error { get; }

    /// <summary>Whether live displays (progress bars, spinners) are shown: a terminal, and not under CI.</summary>
    public bool Interactive { get; }

    /// <summary>The process's console, rich or plain as described above (<paramref name="ci"/>: the CI variable is set).</summary>
    public static Terminal ForProcess(bool ci)
    {
        bool interactive = !System.Console.IsOutputRedirected && !ci
            && Environment.GetEnvironmentVariable("TERM") is not "dumb";
        return Create(System.Console.Out, System.Console.Error, interactive);
    }

    /// <summary>A terminal over the given writers (tests); <paramref name="interactive"/> chooses rich output.</summary>
    public static Terminal Create(TextWriter output, TextWriter error, bool interactive)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = interactive ? InteractionSupport.Yes : InteractionSupport.No,
            Out = new AnsiConsoleOutput(output),
        });
        // Redirected output has no width; Spectre would assume 80 columns and wrap a wide table's cells.
        if (!interactive) console.Profile.Width = 4096;
        return new Terminal(console, output, error, interactive);
    }

    /// <summary>Writes a line of plain text to standard output.</summary>
    public void Line(string text = "")
    {
        if (Interactive) Console.WriteLine(text);
        else Output.WriteLine(text);
    }

    /// <summary>Writes a table (or any renderable): drawn on a terminal; in plain output without the blank padding lines.</summary>
    public void Write(Spectre.Console.Rendering.IRenderable renderable)
    {
        if (Interactive)
        {
            Console.Write(renderable);
            return;
        }
        var text = new StringWriter();
        var plain = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Interactive = InteractionSupport.No, Out = new AnsiConsoleOutput(text),
        });
        plain.Profile.Width = 4096;
        plain.Write(renderable);
        foreach (var line in text.ToString().Split('\n'))
            if (line.Trim().Length > 0) Output.WriteLine(line.TrimEnd());
    }

    /// <summary>A note on standard error (never mixed into output that scripts read).</summary>
    public void Note(string text) => Error.WriteLine(text);
}
