using System.Text;
using Tessera.Models.Tokenization;

namespace Tessera.Bench.Serving;

/// <summary>
/// A tokenizer for benchmarks of models with random weights and a large vocabulary: token id i stands for the ASCII text
/// "i " (so every token decodes to text at once and the stream carries one event per token); no end-of-text token, so
/// every request runs to max_tokens. Prompts are sent as token ids.
/// </summary>
internal sealed class SyntheticTokenizer(int vocabSize) : ITokenizer
{
    private readonly byte[][] _bytes = Enumerable.Range(0, vocabSize).Select(i => Encoding.ASCII.GetBytes(i + " ")).ToArray();

    public int VocabSize => vocabSize;

    public int? EndOfTextId => null;

    public int[] Encode(string text) =>
        text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(s => int.TryParse(s, out var id) && id < vocabSize ? id : 0).ToArray();

    public string Decode(ReadOnlySpan<int> ids)
    {
        var sb = new StringBuilder();
        foreach (var id in ids) sb.Append(id).Append(' ');
        return sb.ToString();
    }

    public ReadOnlySpan<byte> TokenBytes(int id) => _bytes[id];
}
