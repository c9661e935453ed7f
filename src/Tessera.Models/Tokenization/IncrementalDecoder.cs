using System.Text;

namespace Tessera.Models.Tokenization;

/// <summary>
/// Turns a stream of token ids into text pieces as they come, holding back the bytes of a UTF-8 character
/// split across tokens until it is complete (byte-level BPE splits multi-byte characters freely).
/// </summary>
public sealed class IncrementalDecoder
{
    private readonly ITokenizer _tokenizer;
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private char[] _chars = new char[64];

    /// <summary>Creates a decoder over <paramref name="tokenizer"/>'s token bytes.</summary>
    public IncrementalDecoder(ITokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Adds one token; returns the text completed by it (possibly empty).</summary>
    public string Push(int id) => Convert(_tokenizer.TokenBytes(id), flush: false);

    /// <summary>Ends the stream: bytes of an unfinished character come out as U+FFFD.</summary>
    public string Flush() => Convert(ReadOnlySpan<byte>.Empty, flush: true);

    private string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        int needed = _utf8.GetCharCount(bytes, flush: false) + 4;
        if (_chars.Length < needed) _chars = new char[Math.Max(needed, _chars.Length * 2)];
        int count = _utf8.GetChars(bytes, _chars, flush);
        return new string(_chars, 0, count);
    }
}
