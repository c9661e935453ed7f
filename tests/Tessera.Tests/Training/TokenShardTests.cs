using System.Buffers.Binary;
using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Training;

public sealed class TokenShardTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-shard-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void WrittenShardHasLlmcHeaderAndReadsBack()
    {
        var path = Path.Combine(_dir, "a.bin");
        int[] tokens = [0, 1, 65535, 50256, 7];
        TokenShard.Write(path, tokens);
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(1024 + 2 * tokens.Length, bytes.Length);
        Assert.Equal(20240520, BinaryPrimitives.ReadInt32LittleEndian(bytes));
        Assert.Equal(1, BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4)));
        Assert.Equal(tokens.Length, BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8)));
        Assert.Equal(tokens.Select(t => (ushort)t), TokenShard.ReadTokens(path));
    }

    [Theory]
    [InlineData(0, "magic")]
    [InlineData(4, "version")]
    [InlineData(8, "header says")]
    public void CorruptHeaderIsRejectedNamingFileAndField(int byteOffset, string expected)
    {
        var path = Path.Combine(_dir, "bad.bin");
        TokenShard.Write(path, [1, 2, 3]);
        var bytes = File.ReadAllBytes(path);
        bytes[byteOffset] ^= 0x55;
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<InvalidDataException>(() => TokenShard.ReadTokenCount(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void TruncatedShardIsRejected()
    {
        var path = Path.Combine(_dir, "short.bin");
        TokenShard.Write(path, [1, 2, 3, 4]);
        using (var f = new FileStream(path, FileMode.Open)) f.SetLength(f.Length - 1);
        var e = Assert.Throws<InvalidDataException>(() => TokenShard.ReadTokenCount(path));
        Assert.Contains("bytes", e.Message);
        File.WriteAllBytes(path, new byte[10]);
        Assert.Throws<InvalidDataException>(() => TokenShard.ReadTokenCount(path));
    }

    [Fact]
    public void TokenTooLargeForUint16FailsWithoutWritingTheFile()
    {
        var path = Path.Combine(_dir, "big.bin");
        Assert.Throws<ArgumentOutOfRangeException>(() => TokenShard.Write(path, [1, 70000]));
        Assert.Empty(Directory.GetFiles(_dir));
    }

    [Fact]
    public void LoaderGivesEachRankItsOwnSliceAndNextTokenTargets()
    {
        var path = Path.Combine(_dir, "seq.bin");
        TokenShard.Write(path, Enumerable.Range(0, 200).ToArray());
        int b = 2, t = 4;
        var r0 = new TokenDataLoader([path], b, t, rank: 0, worldSize: 2);
        var r1 = new TokenDataLoader([path], b, t, rank: 1, worldSize: 2);
        var (i0, t0, i1, t1) = (new int[b * t], new int[b * t], new int[b * t], new int[b * t]);
        r0.NextBatch(i0, t0);
        r1.NextBatch(i1, t1);
        Assert.Equal(Enumerable.Range(0, 8), i0);
        Assert.Equal(Enumerable.Range(8, 8), i1);
        Assert.Equal(Enumerable.Range(1, 8), t0);
        r0.NextBatch(i0, t0);
        Assert.Equal(Enumerable.Range(16, 8), i0);   // the global batch advanced by world * B * T
    }

    [Fact]
    public void RestoringThePositionReplaysTheSameBatches()
    {
        var path = Path.Combine(_dir, "seq.bin");
        TokenShard.Write(path, Enumerable.Range(0, 100).Select(i => i * 7 % 500).ToArray());
        var a = new TokenDataLoader([path], 2, 5);
        var (x, y) = (new int[10], new int[10]);
        for (int i = 0; i < 3; i++) a.NextBatch(x, y);
        var saved = a.Position;
        var expected = new List<int[]>();
        for (int i = 0; i < 12; i++) { a.NextBatch(x, y); expected.Add((int[])x.Clone()); }   // wraps around the shard
        var b = new TokenDataLoader([path], 2, 5) { Position = saved };
        foreach (var e in expected) { b.NextBatch(x, y); Assert.Equal(e, x); }
        Assert.True(b.Position.Epoch >= 1);
    }

    [Fact]
    public void ShardSmallerThanOneGlobalBatchIsRejected()
    {
        var path = Path.Combine(_dir, "tiny.bin");
        TokenShard.Write(path, [1, 2, 3]);
        var e = Assert.Throws<InvalidDataException>(() => new TokenDataLoader([path], 2, 4));
        Assert.Contains("fewer than one global batch", e.Message);
    }

    [Fact]
    public void Uint32ShardHasLlmcsLlama3HeaderAndReadsBackIdsAbove65535()
    {
        var path = Path.Combine(_dir, "wide.bin");
        int[] tokens = [0, 128000, 65536, 128255, 7, int.MaxValue];
        TokenShard.Write(path, tokens, TokenShardFormat.Uint32);
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(1024 + 4 * tokens.Length, bytes.Length);
        // llm.c dev/data/data_common.py, HEADERS_INFO["llama-3"]: magic 20240801, version 7, uint32 tokens.
        Assert.Equal(20240801, BinaryPrimitives.ReadInt32LittleEndian(bytes));
        Assert.Equal(7, BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4)));
        Assert.Equal(tokens.Length, BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8)));
        Assert.Equal((TokenShardFormat.Uint32, (long)tokens.Length), TokenShard.ReadHeader(path));
        Assert.Equal(tokens, TokenShard.ReadTokenIds(path));
        var e = Assert.Throws<InvalidDataException>(() => TokenShard.ReadTokens(path));
        Assert.Contains("uint32", e.Message);
    }

    [Fact]
    public void TheFormatFollowsTheVocabularySize()
    {
        Assert.Equal(TokenShardFormat.Uint16, TokenShard.FormatFor(50257));
        Assert.Equal(TokenShardFormat.Uint16, TokenShard.FormatFor(65536));
        Assert.Equal(TokenShardFormat.Uint32, TokenShard.FormatFor(65537));
        Assert.Equal(TokenShardFormat.Uint32, TokenShard.FormatFor(128256));
    }

    [Fact]
    public void ALoaderReadsUint16AndUint32ShardsOneAfterTheOther()
    {
        var narrow = Path.Combine(_dir, "a_000.bin");
        var wide = Path.Combine(_dir, "a_001.bin");
        TokenShard.Write(narrow, Enumerable.Range(0, 9).ToArray());
        TokenShard.Write(wide, Enumerable.Range(0, 9).Select(i => 100_000 + i).ToArray(), TokenShardFormat.Uint32);
        var loader = new TokenDataLoader([narrow, wide], batchSize: 1, sequenceLength: 4);
        var inputs = new int[4];
        var targets = new int[4];
        loader.NextBatch(inputs, targets);
        Assert.Equal([0, 1, 2, 3], inputs);
        Assert.Equal([1, 2, 3, 4], targets);
        loader.NextBatch(inputs, targets);       // 4..8 left in the first shard: 4 + 1 fit
        Assert.Equal([4, 5, 6, 7], inputs);
        loader.NextBatch(inputs, targets);
        Assert.Equal([100_000, 100_001, 100_002, 100_003], inputs);
        Assert.Equal([100_001, 100_002, 100_003, 100_004], targets);
    }

    [Fact]
    public void AUint16ShardRefusesATokenAbove65535NamingTheWiderFormat()
    {
        var path = Path.Combine(_dir, "narrow.bin");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => TokenShard.Write(path, [1, 128000]));
        Assert.Contains("token 128000 at index 1", e.Message);
        Assert.Contains("Uint32", e.Message);
        Assert.False(File.Exists(path));
    }
}
