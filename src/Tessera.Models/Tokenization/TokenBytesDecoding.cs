using System.Text;

namespace Tessera.Models.Tokenization;

/// <summary>Decoding by concatenating token bytes and reading them as UTF-8 (invalid sequences become U+FFFD).</summary>
internal static class TokenBytesDecoding
{
    public static string Decode(ITokenizer tokenizer, ReadOnlySpan<int> ids)
    {
        var buffer = new List<byte>(ids.Length * 4);
        foreach (var id in ids) buffer.AddRange(tokenizer.TokenBytes(id));
        return Encoding.UTF8.GetString(buffer.ToArray());
    }
}
