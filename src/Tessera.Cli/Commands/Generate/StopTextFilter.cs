namespace Tessera.Cli.Commands.Generate;

/// <summary>
/// Streams generated text while watching for stop strings that may span token boundaries: text is released only once it
/// can no longer be the start of a stop string, and generation ends at the first complete one, which is not printed.
/// </summary>
public sealed class StopTextFilter(IReadOnlyList<string> stops)
{
    private readonly string[] _stops = stops.Where(s => s.Length > 0).ToArray();
    private string _pending = "";

    /// <summary>Whether a stop string was found.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds decoded text; returns what can be printed now (up to the stop string once found).</summary>
    public string Push(string text)
    {
        if (Stopped) return "";
        _pending += text;
        int first = -1;
        foreach (var s in _stops)
        {
            int at = _pending.IndexOf(s, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first)) first = at;
        }
        if (first >= 0)
        {
            Stopped = true;
            var before = _pending[..first];
            _pending = "";
            return before;
        }
        // Keep the longest suffix that is a proper prefix of some stop string; release the rest.
        int keep = 0;
        foreach (var s in _stops)
            for (int n = Math.Min(s.Length - 1, _pending.Length); n > keep; n--)
                if (_pending.AsSpan(_pending.Length - n).SequenceEqual(s.AsSpan(0, n))) { keep = n; break; }
        var release = _pending[..^keep];
        _pending = _pending[^keep..];
        return release;
    }

    /// <summary>The held-back text at the end of generation (it never completed a stop string).</summary>
    public string Flush()
    {
        var rest = Stopped ? "" : _pending;
        _pending = "";
        return rest;
    }
}
