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

    [Fact]
    public void StepDirectoryIsInvisibleWhileItsFilesAreWritten()
    {
        var store = new CheckpointStore(_root);
        var first = store.Save(10, WriteTwoFiles);
        string final = Path.Combine(_root, "step_000020");
        store.Save(20, dir =>
        {
            WriteTwoFiles(dir);
            // Mid-save: the files exist, but under a hidden temporary name; neither step_000020 nor "latest" shows them.
            Assert.NotEqual(final, dir);
            Assert.StartsWith(".step_000020.tmp-", Path.GetFileName(dir));
            Assert.False(Directory.Exists(final), "step_000020 exists before its files are complete");
            Assert.Equal(first, store.Latest());
            Assert.Equal([10], store.Checkpoints().Select(c => c.Step));
        });
        Assert.Equal(final, store.Latest());
        CheckpointManifest.Read(final).Verify(final);
    }

    [Fact]
    public void FailingResaveOfAStepLeavesTheOldCheckpointIntact()
    {
        var store = new CheckpointStore(_root);
        var dir = store.Save(10, WriteTwoFiles);
        var before = Directory.GetFiles(dir).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);
        Assert.Throws<IOException>(() => store.Save(10, d =>
        {
            File.WriteAllText(Path.Combine(d, "a.txt"), "a newer alpha, half written");
            throw new IOException("disk full");
        }));
        Assert.Equal(dir, store.Latest());
        var after = Directory.GetFiles(dir).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);
        Assert.Equal(before.Keys.Order(), after.Keys.Order());
        foreach (var (name, bytes) in before) Assert.Equal(bytes, after[name]);
        CheckpointManifest.Read(dir).Verify(dir);
        Assert.Empty(Directory.GetDirectories(_root, ".*"));   // the failed attempt's temporary directory is gone
    }

    [Fact]
    public void PruneKeepsTheNewestAndNeverTheLatestPointer()
    {
        var store = new CheckpointStore(_root);
        foreach (var step in new[] { 10, 20, 30, 40 }) store.Save(step, WriteTwoFiles);
        Assert.Equal(["step_000010", "step_000020"], store.Prune(keepLast: 2).Select(Path.GetFileName));
        Assert.Equal([30, 40], store.Checkpoints().Select(c => c.Step));
        // "latest" names an older step (a re-save of step 30 after 40 was written): it survives a keep-last of 1.
        store.Save(30, WriteTwoFiles);
        Assert.Empty(store.Prune(keepLast: 1));
        Assert.Equal([30, 40], store.Checkpoints().Select(c => c.Step));
    }

    [Fact]
    public void LeftoversOfInterruptedSavesAreRemovedAndCheckpointsKept()
    {
        var store = new CheckpointStore(_root);
        var kept = store.Save(10, WriteTwoFiles);
        var tmp = Directory.CreateDirectory(Path.Combine(_root, ".step_000020.tmp-0123")).FullName;
        var old = Directory.CreateDirectory(Path.Combine(_root, ".step_000010.old-4567")).FullName;
        var pointer = Path.Combine(_root, ".latest.tmp-89ab");
        File.WriteAllText(pointer, "step_000020");
        Assert.Equal(new[] { old, tmp, pointer }.Order(), store.RemoveLeftovers().Order());
        Assert.Equal(["step_000010"], Directory.GetFileSystemEntries(_root).Select(Path.GetFileName).Where(n => n != "latest"));
        Assert.Equal(kept, store.Latest());
    }
}
