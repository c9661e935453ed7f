using System.Buffers.Binary;

namespace Tessera.Training.Data;

/// <summary>
/// llm.c's token shard format: a header of 256 little-endian int32 (magic, version, token count, the rest zero) followed
/// by that many tokens; magic 20240520 / version 1 for uint16 tokens (GPT-2), 20240801 / version 7 for uint32 tokens
/// (Llama 3), exactly as llm.c's data scripts write them (<see cref="TokenShardFormat"/>).
/// </summary>
public static class TokenShard
{
    /// <summary>Header magic number of uint16 shards.</summary>
    public const int Magic = 20240520;

    /// <summary>Format version of uint16 shards.</summary>
    public const int Version = 1;

    /// <summary>Header magic number of uint32 shards (llm.c's "llama-3" format).</summary>
    public const int Magic32 = 20240801;

    /// <summary>Format version of uint32 shards.</summary>
    public const int Version32 = 7;

    /// <summary>Header size in bytes (256 x int32).</summary>
    public const int HeaderBytes = 256 * 4;

    /// <summary>The narrowest format that holds every id of a vocabulary of <paramref name="vocabSize"/> entries.</summary>
    public static TokenShardFormat FormatFor(int vocabSize) =>
        vocabSize <= ushort.MaxValue + 1 ? TokenShardFormat.Uint16 : TokenShardFormat.Uint32;

    /// <summary>Bytes per token of <paramref name="format"/>.</summary>
    public static int TokenBytes(TokenShardFormat format) => format == TokenShardFormat.Uint16 ? 2 : 4;

    /// <summary>Reads and validates a shard's header; returns its token count.</summary>
    /// <exception cref="InvalidDataException">The header or the file length is wrong; the message names the file.</exception>
    public static long ReadTokenCount(string path) => ReadHeader(path).Count;

    /// <summary>Reads and validates a shard's header: its format and token count.</summary>
    /// <exception cref="InvalidDataException">The header or the file length is wrong; the message names the file.</exception>
    public static (TokenShardFormat Format, long Count) ReadHeader(string path)
    {
        using var stream = File.OpenRead(path);
        Span<byte> header = stackalloc byte[HeaderBytes];
        if (stream.Length < HeaderBytes || stream.ReadAtLeast(header, HeaderBytes, throwOnEndOfStream: false) != HeaderBytes)
            throw new InvalidDataException($"{path}: token shard is {stream.Length} bytes, shorter than its {HeaderBytes}-byte header");
        int magic = BinaryPrimitives.ReadInt32LittleEndian(header);
        int version = BinaryPrimitives.ReadInt32LittleEndian(header[4..]);
        int count = BinaryPrimitives.ReadInt32LittleEndian(header[8..]);
        var format = magic switch
        {
            Magic => TokenShardFormat.Uint16,
            Magic32 => TokenShardFormat.Uint32,
            _ => throw new InvalidDataException($"{path}: bad token shard magic {magic} (expected {Magic} for uint16 or {Magic32} for uint32 tokens); is this an llm.c .bin shard?"),
        };
        int expectedVersion = format == TokenShardFormat.Uint16 ? Version : Version32;
        if (version != expectedVersion)
            throw new InvalidDataException($"{path}: unsupported token shard version {version} for magic {magic} (expected {expectedVersion})");
        if (count < 0)
            throw new InvalidDataException($"{path}: negative token count {count} in the header");
        long expected = HeaderBytes + (long)TokenBytes(format) * count;
        if (stream.Length != expected)
            throw new InvalidDataException($"{path}: header says {count} tokens ({expected} bytes) but the file has {stream.Length} bytes");
        return (format, count);
    }

    /// <summary>Reads all tokens of a uint16 shard (validated).</summary>
    /// <exception cref="InvalidDataException">The shard is malformed, or holds uint32 tokens (read it with <see cref="ReadTokenIds"/>).</exception>
    public static ushort[] ReadTokens(string path)
    {
        var (format, count) = ReadHeader(path);
        if (format != TokenShardFormat.Uint16)
            throw new InvalidDataException($"{path}: holds uint32 tokens; read it with TokenShard.ReadTokenIds");
        var tokens = new ushort[count];
        ReadBody(path, System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens.AsSpan()));
        if (!BitConverter.IsLittleEndian)
            for (int i = 0; i < tokens.Length; i++) tokens[i] = BinaryPrimitives.ReverseEndianness(tokens[i]);
        return tokens;
    }

    /// <summary>Reads all tokens of a shard of either width (validated), as ids.</summary>
    /// <exception cref="InvalidDataException">The shard is malformed, or a uint32 token does not fit an int.</exception>
    public static int[] ReadTokenIds(string path)
    {
        var (format, count) = ReadHeader(path);
        if (format == TokenShardFormat.Uint16) return Array.ConvertAll(ReadTokens(path), t => (int)t);
        var tokens = new int[count];
        ReadBody(path, System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens.AsSpan()));
        for (int i = 0; i < tokens.Length; i++)
        {
            if (!BitConverter.IsLittleEndian) tokens[i] = BinaryPrimitives.ReverseEndianness(tokens[i]);
            if (tokens[i] < 0) throw new InvalidDataException($"{path}: token {i} is {(uint)tokens[i]}, beyond the largest id Tessera accepts ({int.MaxValue})");
        }
        return tokens;
    }

    private static void ReadBody(string path, Span<byte> destination)
    {
        using var stream = File.OpenRead(path);
        stream.Seek(HeaderBytes, SeekOrigin.Begin);
        stream.ReadExactly(destination);
    }

    /// <summary>Writes a shard atomically (temporary file, flush to disk, rename), uint16 or uint32 as <paramref name="format"/> says.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A token is negative or does not fit the format; nothing is written.</exception>
    public static void Write(string path, ReadOnlySpan<int> tokens, TokenShardFormat format = TokenShardFormat.Uint16)
    {
        var header = new byte[HeaderBytes];
        bool wide = format == TokenShardFormat.Uint32;
        BinaryPrimitives.WriteInt32LittleEndian(header, wide ? Magic32 : Magic);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(4), wide ? Version32 : Version);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), tokens.Length);
        var body = new byte[(long)TokenBytes(format) * tokens.Length];
        for (int i = 0; i < tokens.Length; i++)
        {
            int t = tokens[i];
            if (t < 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"token {t} at index {i} is negative");
            if (wide) BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(4 * i), (uint)t);
            else
            {
                if (t > ushort.MaxValue)
                    throw new ArgumentOutOfRangeException(nameof(tokens), $"token {t} at index {i} does not fit the shard's uint16 format; write uint32 shards (TokenShardFormat.Uint32) for vocabularies above 65,536");
                BinaryPrimitives.WriteUInt16LittleEndian(body.AsSpan(2 * i), (ushort)t);
            }
        }
        AtomicFile.Write(path, stream => { stream.Write(header); stream.Write(body); });
    }
}
