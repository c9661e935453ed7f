using Tessera.Training.Checkpoints;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// A checkpoint test's scratch folder: the token shard of <see cref="ParallelRun.WriteShard"/> the runs train on, and the
/// checkpoint store they save to (its "checkpoints" subfolder); the folder and all in it are deleted on dispose.
/// </summary>
internal sealed class RunDirectory : IDisposable
{
    /// <param name="prefix">The temporary folder's name prefix, naming the test class.</param>
    public RunDirectory(string prefix)
    {
        Root = Directory.CreateTempSubdirectory(prefix).FullName;
        Shard = ParallelRun.WriteShard(Root);
        Checkpoints = new CheckpointStore(Path.Combine(Root, "checkpoints"));
    }

    public string Root { get; }

    /// <summary>The token shard (train.bin) in <see cref="Root"/>.</summary>
    public string Shard { get; }

    public CheckpointStore Checkpoints { get; }

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
