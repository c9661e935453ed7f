using Tessera.Models.Tokenization;
using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Training;

/// <summary>prepare's library half: jsonl and plain text in, llm.c shards out, delimiters, width, progress, bad input.</summary>
public sealed class ShardPreparationTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-prepare-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A word-level stand-in with a Llama 3-sized vocabulary: each character c becomes id 100000 + c; BOS 128000.</summary>
    private sealed class WideTokenizer : ITokenizer
    {
        public int VocabSize => 128256;
        public int? EndOfTextId => 128001;
        public int? BeginOfSequenceId => 128000;
        public int[] Encode(string text) => text.Select(c => 100_000 + c).ToArray();
        public string Decode(ReadOnlySpan<int> ids) => new(ids.ToArray().Select(i => (char)(i - 100_000)).ToArray());
        public ReadOnlySpan<byte> TokenBytes(int id) => System.Text.Encoding.UTF8.GetBytes(((char)(id - 100_000)).ToString());
    }

    private string Write(string name, string content)
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllText(path, content);
        return path;
    }

    [Fact]
    public void JsonlAndPlainTextBecomeBosDelimitedDocumentsInUint32Shards()
    {
        var jsonl = Write("docs.jsonl", "{\"text\": \"ab\", \"id\": 1}\n\n{\"text\": \"c\"}\n");
        var text = Write("more.txt", "de");
        var progress = new List<PrepareProgress>();
        var written = ShardPreparation.Prepare([jsonl, text], new WideTokenizer(),
            new ShardPreparationOptions { OutputDirectory = Path.Combine(_dir, "out"), ValidationFraction = 0 }, new SynchronousProgress(progress));
        var (path, count) = Assert.Single(written);
        Assert.Equal(TokenShardFormat.Uint32, TokenShard.ReadHeader(path).Format);
        // Three documents (the blank line is none), each after BOS, as llm.c's Llama 3 preparation does.
        int[] expected = [128000, 100_097, 100_098, 128000, 100_099, 128000, 100_100, 100_101];
        Assert.Equal(expected, TokenShard.ReadTokenIds(path));
        Assert.Equal(expected.Length, count);
        Assert.Equal(3, progress[^1].Documents);
        Assert.Equal(progress[^1].TotalBytes, progress[^1].BytesRead);
        Assert.Equal(expected.Length, progress[^1].Tokens);
        Assert.True(progress.Count >= 3, "progress is reported per document");
    }

    [Fact]
    public void ByteTokensGoToUint16ShardsWithoutDelimiters()
    {
        var text = Write("a.txt", "hello");
        var written = ShardPreparation.Prepare([text], new ByteTokenizer(),
            new ShardPreparationOptions { OutputDirectory = Path.Combine(_dir, "out"), ValidationFraction = 0.2 });
        Assert.Equal(2, written.Count);
        Assert.All(written, w => Assert.Equal(TokenShardFormat.Uint16, TokenShard.ReadHeader(w.Path).Format));
        Assert.Equal("hell"u8.ToArray().Select(b => (int)b), TokenShard.ReadTokenIds(written[0].Path));
        Assert.Equal([(int)'o'], TokenShard.ReadTokenIds(written[1].Path));
    }

    [Theory]
    [InlineData("{\"text\": \"ok\"}\n{\"content\": \"x\"}\n", ":2: the object has no \"text\" field")]
    [InlineData("{\"text\": 5}\n", ":1: field \"text\" must be a string, got Number")]
    [InlineData("{\"text\": \"ok\"}\nnot json\n", ":2: not valid JSON")]
    [InlineData("[1, 2]\n", ":1: expected a JSON object")]
    public void ABadJsonlLineIsRefusedNamingFileLineAndFieldAndNothingIsWritten(string content, string expected)
    {
        var jsonl = Write("bad.jsonl", content);
        var output = Path.Combine(_dir, "out");
        var e = Assert.Throws<InvalidDataException>(() => ShardPreparation.Prepare([jsonl], new ByteTokenizer(), new ShardPreparationOptions { OutputDirectory = output }));
        Assert.Contains(jsonl + expected, e.Message);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void AMissingFileIsRefusedBeforeAnythingIsRead()
    {
        var good = Write("good.txt", "x");
        var output = Path.Combine(_dir, "out");
        var e = Assert.Throws<FileNotFoundException>(() =>
            ShardPreparation.Prepare([good, Path.Combine(_dir, "missing.jsonl")], new ByteTokenizer(), new ShardPreparationOptions { OutputDirectory = output }));
        Assert.Contains("missing.jsonl", e.Message);
        Assert.False(Directory.Exists(output));
    }

    /// <summary>IProgress that records on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SynchronousProgress(List<PrepareProgress> reports) : IProgress<PrepareProgress>
    {
        public void Report(PrepareProgress value) => reports.Add(value);
    }
}
