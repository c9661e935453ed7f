namespace Tessera.Models.Tokenization;

/// <summary>Text to token ids and back. Every token is a byte string, so decoding is exact and streamable.</summary>
public interface ITokenizer
{
    /// <summary>Number of token ids (the model's unpadded vocabulary size).</summary>
    int VocabSize { get; }

    /// <summary>The end-of-text / end-of-sequence token, when the vocabulary has one.</summary>
    int? EndOfTextId { get; }

    /// <summary>The beginning-of-sequence token the tokenizer puts in front of a text (Llama's &lt;|begin_of_text|&gt;,
    /// &lt;s&gt;), or null when it adds none (GPT-2, Qwen2).</summary>
    int? BeginOfSequenceId => null;

    /// <summary>Token ids of <paramref name="text"/> as the model expects a prompt: <see cref="BeginOfSequenceId"/> first
    /// when there is one (what Hugging Face's tokenizer(text) does with add_special_tokens).</summary>
    int[] EncodeWithSpecialTokens(string text) => BeginOfSequenceId is int bos ? [bos, .. Encode(text)] : Encode(text);

    /// <summary>Token ids of <paramref name="text"/> (no begin/end tokens added).</summary>
    int[] Encode(string text);

    /// <summary>The text of <paramref name="ids"/>; invalid UTF-8 becomes U+FFFD, as Hugging Face decodes.</summary>
    string Decode(ReadOnlySpan<int> ids);

    /// <summary>The bytes token <paramref name="id"/> stands for.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The id is not in the vocabulary.</exception>
    ReadOnlySpan<byte> TokenBytes(int id);

    /// <summary>A decoder for streaming generation that never emits half a UTF-8 character.</summary>
    IncrementalDecoder CreateIncrementalDecoder() => new(this);
}
