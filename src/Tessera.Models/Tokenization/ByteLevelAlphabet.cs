namespace Tessera.Models.Tokenization;

/// <summary>
/// GPT-2's byte-level alphabet: each byte is written as a printable Unicode character in vocab.json and
/// merges.txt (printable Latin-1 bytes stand for themselves; the rest map to U+0100 onwards, e.g. space to 'Ġ').
/// </summary>
internal static class ByteLevelAlphabet
{
    /// <summary>The character standing for each byte.</summary>
    public static readonly char[] ByteToChar = Build();

    /// <summary>The byte each alphabet character stands for; -1 elsewhere.</summary>
    public static readonly int[] CharToByte = Invert(ByteToChar);

    private static char[] Build()
    {
        var map = new char[256];
        var printable = new bool[256];
        for (int b = '!'; b <= '~'; b++) printable[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
        int next = 256;
        for (int b = 0; b < 256; b++) map[b] = printable[b] ? (char)b : (char)next++;
        return map;
    }

    private static int[] Invert(char[] map)
    {
        var inv = Enumerable.Repeat(-1, 512).ToArray();
        for (int b = 0; b < 256; b++) inv[map[b]] = b;
        return inv;
    }

    /// <summary>The bytes a vocabulary string stands for; null when it has characters outside the alphabet.</summary>
    public static byte[]? Decode(string token)
    {
        var bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            int c = token[i];
            if (c >= CharToByte.Length || CharToByte[c] < 0) return null;
            bytes[i] = (byte)CharToByte[c];
        }
        return bytes;
    }
}
