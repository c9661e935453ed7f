using System.Runtime.InteropServices;

namespace Tessera.Inference.Speculation;

/// <summary>
/// Guesses the tokens that follow a sequence from the sequence itself (prompt lookup decoding, Saxena 2023; vLLM's n-gram
/// speculator): find the latest earlier place where the sequence's last n tokens occurred, for the largest n in
/// [<see cref="SpeculationOptions.MinNgram"/>, <see cref="SpeculationOptions.MaxNgram"/>], and propose the tokens that came
/// after it. The guesses continue through themselves, so a sequence caught in a loop of period p gets a whole run of
/// drafts, not just p. Needs no second model: it pays where outputs repeat their input (code edits, extraction,
/// summaries that quote, templated text) and costs one pass over the sequence's tokens on the host.
/// </summary>
public sealed class NgramDrafter
{
    private readonly int _min, _max;

    /// <summary>A drafter with the n-gram lengths of <paramref name="options"/>.</summary>
    public NgramDrafter(SpeculationOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        (_min, _max) = (options.MinNgram, options.MaxNgram);
    }

    /// <summary>
    /// Writes up to <paramref name="drafts"/>.Length guesses of what follows <paramref name="tokens"/> into
    /// <paramref name="drafts"/> and returns how many (0 when the last <see cref="SpeculationOptions.MinNgram"/> tokens
    /// never occurred before).
    /// </summary>
    public int Propose(IReadOnlyList<int> tokens, Span<int> drafts)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        // A span over the tokens, so that the search for the last token is SIMD (Span.LastIndexOf).
        ReadOnlySpan<int> t = tokens switch
        {
            List<int> list => CollectionsMarshal.AsSpan(list),
            int[] array => array,
            _ => tokens.ToArray(),
        };
        int count = t.Length;
        if (drafts.IsEmpty || count <= _min) return 0;
        // From the latest candidate back: a match ends at e - 1 (tokens [e - length, e) equal the last `length` tokens)
        // and is followed by t[e]. Keep the latest of the longest; stop at the first match of _max.
        int bestEnd = -1, bestLength = 0;
        int last = t[count - 1];
        for (int end = count - 1; ;)
        {
            int i = t[..end].LastIndexOf(last);                       // i = e - 1
            if (i < _min - 1) break;
            end = i;
            int e = i + 1, length = 1, most = Math.Min(_max, e);
            while (length < most && t[e - 1 - length] == t[count - 1 - length]) length++;
            if (length < _min || length <= bestLength) continue;
            (bestEnd, bestLength) = (e, length);
            if (length == _max) break;
        }
        if (bestEnd < 0) return 0;
        // Copy what followed the match; past the sequence's end that is the drafts already written (a loop repeats).
        for (int j = 0; j < drafts.Length; j++)
        {
            int source = bestEnd + j;
            drafts[j] = source < count ? t[source] : drafts[source - count];
        }
        return drafts.Length;
    }
}
