using System.Text;

namespace Tessera.Models.Tokenization;

/// <summary>The 256 bytes of UTF-8 as tokens 0..255: the embedded default model's tokenizer. No end-of-text token.</summary>
public sealed class ByteTokenizer : ITokenizer
{
    private static readonly byte[][] Bytes = Enumerable.Range(0, 256).Select(b => new[] { (byte)b }).ToArray();

    /// <inheritdoc/>
    public int VocabSize => 256;

    /// <inheritdoc/>
    public int? EndOfTextId => null;

    /// <inheritdoc/>
    public int[] Encode(string text) => Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<int> ids)
    {
        var bytes = new byte[ids.Length];
        for (int i = 0; i < ids.Length; i++) bytes[i] = TokenBytes(ids[i])[0];
        return Encoding.UTF8.GetString(bytes);
    }

    /// <inheritdoc/>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < 256 ? Bytes[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, "byte tokens are 0..255");
}
