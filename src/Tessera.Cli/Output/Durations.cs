namespace Tessera.Cli.Output;

/// <summary>Durations as people read them in a progress line.</summary>
public static class Durations
{
    /// <summary>"1m05s", or "2h03m" from an hour on.</summary>
    public static string Format(double seconds)
    {
        var t = TimeSpan.FromSeconds(Math.Max(0, seconds));
        return t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";
    }
}
