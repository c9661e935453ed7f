namespace Tessera.Inference.Serving;

/// <summary>
/// Finds stop strings in streamed text pieces, across token boundaries: text that might be the beginning of a stop
/// string is held back until the next pieces decide (the longest suffix of the pending text that is a prefix of some stop
/// string), so what has been released never contains a stop string and never has to be taken back. Without stop strings
/// every piece passes through at once.
/// </summary>
public sealed class StopStringMatcher
{
    private readonly string[] _stops;
    private string _pending = "";

    /// <summary>A matcher for <paramref name="stops"/> (empty strings are ignored).</summary>
    public StopStringMatcher(IEnumerable<string> stops) => _stops = stops.Where(s => s.Length > 0).Distinct(StringComparer.Ordinal).ToArray();

    /// <summary>Whether a stop string was found (nothing more is accepted).</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds <paramref name="piece"/>; returns the text now certain to precede any stop string.</summary>
    public string Push(string piece)
    {
        if (Stopped) return "";
        if (_stops.Length == 0) return piece;
        string text = _pending + piece;
        int first = -1;
        foreach (var stop in _stops)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first)) first = at;
        }
        if (first >= 0)
        {
            Stopped = true;
            _pending = "";
            return text[..first];
        }
        int hold = 0;
        foreach (var stop in _stops)
            for (int k = Math.Min(stop.Length - 1, text.Length); k > hold; k--)
                if (text.AsSpan(text.Length - k).SequenceEqual(stop.AsSpan(0, k))) { hold = k; break; }
        _pending = text[^hold..];
        return text[..^hold];
    }

    /// <summary>Ends the stream: releases held-back text that turned out not to start a stop string.</summary>
    public string Flush()
    {
        var rest = Stopped ? "" : _pending;
        _pending = "";
        return rest;
    }
}
