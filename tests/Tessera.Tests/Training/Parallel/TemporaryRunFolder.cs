using Tessera.Training.Checkpoints;
using Tessera.Training.Runs;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// A training test's scratch run folder (thread-rank, pipeline and checkpoint tests): the token shard of
/// <see cref="ParallelRun.WriteShard"/> the runs train on, and the checkpoint store they save to (a <see cref="RunDirectory"/>'s);
/// the folder and all in it are deleted on dispose.
/// </summary>
internal sealed class TemporaryRunFolder : IDisposable
{
    /// <param name="prefix">The temporary folder's name prefix, naming the test class.</param>
    public TemporaryRunFolder(string prefix)
    {
        Root = Directory.CreateTempSubdirectory(prefix).FullName;
        Shard = ParallelRun.WriteShard(Root);
        Checkpoints = new RunDirectory(Root).Checkpoints;
    }

    public string Root { get; }

    /// <summary>The token shard (train.bin) in <see cref="Root"/>.</summary>
    public string Shard { get; }

    public CheckpointStore Checkpoints { get; }

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
