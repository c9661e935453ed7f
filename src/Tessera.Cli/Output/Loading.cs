using Spectre.Console;

namespace Tessera.Cli.Output;

/// <summary>Long loads (a model's weights, a corpus) under a spinner with the elapsed time on a terminal; silent otherwise.</summary>
public static class Loading
{
    /// <summary>Runs <paramref name="load"/>, showing <paramref name="what"/> while it runs on an interactive terminal.</summary>
    public static T Run<T>(Terminal terminal, string what, Func<T> load)
    {
        if (!terminal.Interactive) return load();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = terminal.Console.Status().Spinner(Spinner.Known.Dots).Start(Markup.Escape(what), _ => load());
        terminal.Console.MarkupLine($"[grey]{Markup.Escape(what)}: {clock.Elapsed.TotalSeconds:F1} s[/]");
        return result;
    }
}
