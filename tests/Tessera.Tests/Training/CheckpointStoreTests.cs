using Tessera.Training.Checkpoints;
using Xunit;

namespace Tessera.Tests.Training;

public sealed class CheckpointStoreTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("tessera-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private static void WriteTwoFiles(string dir)
    {
        File.WriteAllText(Path.Combine(dir, "a.txt"), "alpha");
        File.WriteAllBytes(Path.Combine(dir, "b.bin"), [1, 2, 3]);
    }

    [Fact]
    public void SavedCheckpointIsManifestedAndNamedByLatest()
    {
        var store = new CheckpointStore(_root);
        var dir = store.Save(20, WriteTwoFiles);
        Assert.Equal(Path.Combine(_root, "step_000020"), dir);
        Assert.Equal(dir, store.Latest());
        var manifest = CheckpointManifest.Read(dir);
        Assert.Equal(["a.txt", "b.bin"], manifest.Files.Keys.Order());
        manifest.Verify(dir);
    }

    [Fact]
    public void FailedSaveLeavesNoDirectoryAndKeepsTheOldLatest()
    {
        var store = new CheckpointStore(_root);
        var first = store.Save(10, WriteTwoFiles);
        Assert.Throws<IOException>(() => store.Save(20, d => { WriteTwoFiles(d); throw new IOException("disk full"); }));
        Assert.Equal(first, store.Latest());
        Assert.Equal(["step_000010"], Directory.GetDirectories(_root).Select(Path.GetFileName));
    }

    [Fact]
    public void HashMismatchAndMissingFileAreReportedByName()
    {
        var store = new CheckpointStore(_root);
        var dir = store.Save(5, WriteTwoFiles);
        File.WriteAllText(Path.Combine(dir, "a.txt"), "alphA");
        var e = Assert.Throws<CheckpointException>(() => CheckpointManifest.Read(dir).Verify(dir));
        Assert.Contains("a.txt", e.Message);
        Assert.Contains("SHA-256", e.Message);
        File.Delete(Path.Combine(dir, "b.bin"));
        File.WriteAllText(Path.Combine(dir, "a.txt"), "alpha");
        e = Assert.Throws<CheckpointException>(() => CheckpointManifest.Read(dir).Verify(dir));
        Assert.Contains("b.bin", e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void DirectoryWithoutManifestIsNotACheckpoint()
    {
        var dir = Directory.CreateDirectory(Path.Combine(_root, "step_000001")).FullName;
        WriteTwoFiles(dir);
        var e = Assert.Throws<CheckpointException>(() => CheckpointManifest.Read(dir));
        Assert.Contains("manifest.json", e.Message);
    }
}
