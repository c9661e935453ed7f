using System.Globalization;
using System.Text.Json;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;

namespace Tessera.Training.Parallel;

/// <summary>
/// Checkpoints of data-parallel / ZeRO runs, in one directory of a <see cref="CheckpointStore"/>: every rank writes
/// "zero_shard_R_of_W.safetensors" with the master values and AdamW moments of the arena ranges it owns, cut at
/// parameter boundaries and named by canonical parameter ("value/START/NAME", "m/START/NAME", "v/START/NAME",
/// START = first element within the parameter); rank 0 adds the full model as a Hugging Face directory (F32),
/// trainer_state.json and zero.json; one manifest covers every file. Because pieces are named by parameter and
/// element, not by rank layout, a checkpoint saved by N ranks under any stage loads on M ranks under any stage,
/// or on one rank with the plain <see cref="Trainer"/> (<see cref="RestoreSingle"/>).
/// <para>
/// Mixed precision (a BF16 arena): the "value" pieces and the Hugging Face weights are the F32 masters, never the
/// BF16 copy (which is the masters rounded, so it is rebuilt on load), and the moments are F32, as in the one-rank
/// <see cref="TrainingCheckpoint"/>. Each rank writes its pieces from wherever its masters live (the host shard under
/// offload). Rank 0 exports the F32 model: with the device masters released (offload) it is gathered unit by unit from
/// every rank's owned chunks (<see cref="DataParallelism.GatherMastersToHost"/>). Loading writes the masters (the host shard under
/// offload) and casts the BF16 values from them.
/// trainer_state.json records the arena dtype ("BF16"), and a checkpoint loads only into a run of the same dtype.
/// </para>
/// </summary>
public static class ShardedCheckpoint
{
    /// <summary>Name of rank 0's description of the sharded state.</summary>
    public const string LayoutFile = "zero.json";

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>Shard file name of <paramref name="rank"/> of <paramref name="worldSize"/>.</summary>
    public static string ShardFile(int rank, int worldSize) => $"zero_shard_{rank:D5}_of_{worldSize:D5}.safetensors";

    /// <summary>
    /// Collective: every rank of the trainer's group must call it at the same step. Each rank writes its shard
    /// beside the store, rank 0 moves them into the store's temporary directory, adds the model and the state,
    /// and the store writes the manifest and renames the directory into place (two barriers order the ranks).
    /// Returns the checkpoint directory.
    /// </summary>
    public static string Save(CheckpointStore store, Trainer trainer, string tokenizer)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(trainer);
        var parallel = Strategy(trainer);
        var group = parallel.Group;
        var model = trainer.Model;
        // Each rank writes the pieces of its own shard from wherever its masters live (ShardedAdamW.MasterOf). Rank 0
        // exports the whole model, gathered from every rank's owned chunks of the masters (the host shard under offload,
        // the device's masters or ZeRO-3 master shard otherwise) through unit-size device buffers.
        float[]? exported = parallel.GatherMastersToHost(root: 0);   // rank 0 only
        Directory.CreateDirectory(store.Root);
        string final = Path.Combine(store.Root, CheckpointStore.StepName(trainer.Step));
        string shardName = ShardFile(group.Rank, group.Size);
        string staged = Path.Combine(store.Root, $".{CheckpointStore.StepName(trainer.Step)}.{shardName}.tmp");
        try
        {
            if (group.Rank != 0)
            {
                WriteShard(staged, parallel);
                FlushToDisk(staged);
            }
            group.Barrier().Wait();
            if (group.Rank == 0)
            {
                store.Save(trainer.Step, dir =>
                {
                    WriteShard(Path.Combine(dir, shardName), parallel);
                    for (int r = 1; r < group.Size; r++)
                    {
                        string name = ShardFile(r, group.Size);
                        string from = Path.Combine(store.Root, $".{CheckpointStore.StepName(trainer.Step)}.{name}.tmp");
                        if (!File.Exists(from)) throw new CheckpointException($"{from}: rank {r}'s shard is missing after the barrier; its disk may differ from rank 0's (ranks must share the checkpoint folder)");
                        File.Move(from, Path.Combine(dir, name));
                    }
                    HuggingFaceModelDirectory.Export(dir, model.Config, model.Layout.Parameters.ToDictionary(
                        p => p.Name, p => new HostTensor(p.Shape, exported!.AsSpan((int)p.Offset, (int)p.NumElements).ToArray()), StringComparer.Ordinal));
                    var position = trainer.DataPosition;
                    var state = new TrainerState
                    {
                        Step = trainer.Step, OptimizerStep = parallel.StepCount,
                        DataShard = position.Shard, DataOffset = position.Offset, DataEpoch = position.Epoch,
                        Seed = trainer.Options.Seed, DType = model.DType.SafetensorsName(),
                        Model = model.Config, Options = trainer.Options, Tokenizer = tokenizer,
                    };
                    AtomicFile.WriteAllText(Path.Combine(dir, "trainer_state.json"), JsonSerializer.Serialize(state, Json));
                    var layout = new ZeroCheckpointLayout(group.Size, (int)parallel.Options.Stage,
                        Enumerable.Range(0, group.Size).Select(r => ShardFile(r, group.Size)).ToArray());
                    AtomicFile.WriteAllText(Path.Combine(dir, LayoutFile), JsonSerializer.Serialize(layout, Json));
                });
            }
            group.Barrier().Wait();
        }
        finally
        {
            parallel.ReleaseAll();
        }
        return final;
    }

    /// <summary>
    /// Collective on the trainer's group: verifies the manifest, then every rank loads the full weights and the
    /// moments of the ranges it owns from all shards (any saving world size and stage), and the step, optimizer
    /// step and data position. Mixed precision: the full F32 masters are written and the BF16 values cast from them;
    /// with offload the host master shard is loaded from them.
    /// </summary>
    public static void Restore(string directory, Trainer trainer)
    {
        var parallel = Strategy(trainer);
        var model = trainer.Model;
        var state = ReadChecked(directory, model);
        var pieces = ReadPieces(directory, model.Layout);
        var layout = parallel.Layout;
        var stateBackend = parallel.Optimizer.Host ?? model.Backend;
        foreach (var p in model.Layout.Parameters)
        {
            var full = pieces[p.Name];
            // The weights go wherever this rank keeps them (full arena, masters, value/master shards, host masters).
            parallel.WriteWeights(p, full.Value);
            foreach (var r in layout.Owned)
            {
                long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
                if (lo >= hi) continue;
                var shape = new Shape((int)(hi - lo));
                long at = r.ShardOffset + (lo - r.ArenaOffset);
                HostValues.Write(stateBackend, full.M.AsSpan((int)(lo - p.Offset), (int)(hi - lo)), parallel.Optimizer.M.Narrow(at, shape));
                HostValues.Write(stateBackend, full.V.AsSpan((int)(lo - p.Offset), (int)(hi - lo)), parallel.Optimizer.V.Narrow(at, shape));
            }
        }
        parallel.MarkWeightsWritten();
        parallel.ReleaseAll();
        trainer.Step = state.Step;
        parallel.StepCount = state.OptimizerStep;
        trainer.DataPosition = new DataPosition(state.DataShard, state.DataOffset, state.DataEpoch);
        parallel.Group.Barrier().Wait();
    }

    /// <summary>
    /// Loads a sharded checkpoint (any world size and stage) into a one-rank <see cref="Trainer"/>; a BF16 run's
    /// F32 masters go to the masters and the BF16 values are cast from them.
    /// </summary>
    public static void RestoreSingle(string directory, Transformer model, Trainer trainer)
    {
        var single = trainer.Parallelism as SingleDevice ?? throw new ArgumentException("ShardedCheckpoint.RestoreSingle: the trainer is not a one-device trainer; use Restore");
        var state = ReadChecked(directory, model);
        var pieces = ReadPieces(directory, model.Layout);
        var arena = model.Parameters;
        foreach (var p in arena.Parameters)
        {
            var full = pieces[p.Name];
            HostValues.Write(arena.Backend, full.Value, p.MasterOrValue);
            HostValues.Write(arena.Backend, full.M, single.Optimizer.M.Narrow(p.Offset, p.Shape));
            HostValues.Write(arena.Backend, full.V, single.Optimizer.V.Narrow(p.Offset, p.Shape));
        }
        arena.SyncValuesFromMasters();
        trainer.Step = state.Step;
        single.StepCount = state.OptimizerStep;
        trainer.DataPosition = new DataPosition(state.DataShard, state.DataOffset, state.DataEpoch);
    }

    private static TrainerState ReadChecked(string directory, Transformer model)
    {
        CheckpointManifest.Read(directory).Verify(directory);
        var state = TrainingCheckpoint.ReadState(directory);
        if (state.Model != model.Config)
            throw new CheckpointException($"{Path.Combine(directory, "trainer_state.json")}: the checkpoint's model (L={state.Model.Layers} C={state.Model.Embedding}) differs from this run's (L={model.Config.Layers} C={model.Config.Embedding})");
        if (state.DType != model.DType.SafetensorsName())
            throw new CheckpointException($"{directory}: saved in {state.DType}, this run uses {model.DType.SafetensorsName()}");
        return state;
    }

    private sealed record FullState(double[] Value, double[] M, double[] V, int[] Covered);

    /// <summary>Reassembles every parameter's value and moments from all shard files, checking each element is covered once.</summary>
    private static Dictionary<string, FullState> ReadPieces(string directory, ParameterLayout arena)
    {
        var layoutPath = Path.Combine(directory, LayoutFile);
        if (!File.Exists(layoutPath)) throw new CheckpointException($"{layoutPath}: missing; {directory} is not a sharded (data-parallel) checkpoint");
        var layout = JsonSerializer.Deserialize<ZeroCheckpointLayout>(File.ReadAllText(layoutPath))
            ?? throw new CheckpointException($"{layoutPath}: empty");
        var result = arena.Parameters.ToDictionary(p => p.Name,
            p => new FullState(new double[p.NumElements], new double[p.NumElements], new double[p.NumElements], new int[p.NumElements]), StringComparer.Ordinal);
        foreach (var file in layout.Files)
        {
            var path = Path.Combine(directory, file);
            using var st = SafetensorsFile.Open(path);
            foreach (var info in st.Tensors)
            {
                var parts = info.Name.Split('/', 3);
                if (parts.Length != 3 || !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long start))
                    throw new CheckpointException($"{path}: tensor '{info.Name}' is not named KIND/START/PARAMETER");
                if (!result.TryGetValue(parts[2], out var full))
                    throw new CheckpointException($"{path}: tensor '{info.Name}' names parameter '{parts[2]}', which this model does not have");
                var data = st.ReadAsDouble(info.Name);
                if (start + data.Length > full.Value.Length)
                    throw new CheckpointException($"{path}: '{info.Name}' covers [{start}, {start + data.Length}) past the parameter's {full.Value.Length} elements");
                var target = parts[0] switch
                {
                    "value" => full.Value,
                    "m" => full.M,
                    "v" => full.V,
                    _ => throw new CheckpointException($"{path}: tensor '{info.Name}' has unknown kind '{parts[0]}' (value, m or v)"),
                };
                data.CopyTo(target, start);
                if (parts[0] == "value") for (long i = start; i < start + data.Length; i++) full.Covered[i]++;
            }
        }
        foreach (var (name, full) in result)
        {
            int bad = Array.FindIndex(full.Covered, c => c != 1);
            if (bad >= 0) throw new CheckpointException($"{directory}: element {bad} of '{name}' is stored {full.Covered[bad]} times across the shards (expected once); the checkpoint is incomplete or inconsistent");
        }
        return result;
    }

    private static void WriteShard(string path, DataParallelism parallel)
    {
        var model = parallel.Model;
        var layout = parallel.Layout;
        var opt = parallel.Optimizer;
        var stateBackend = opt.Host ?? model.Backend;
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "tessera-zero-shard";
        writer.Metadata["rank"] = parallel.Group.Rank.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["world_size"] = parallel.Group.Size.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["stage"] = ((int)parallel.Options.Stage).ToString(CultureInfo.InvariantCulture);
        writer.Metadata["dtype"] = model.DType.SafetensorsName();
        writer.Metadata["value_dtype"] = parallel.MasterDType.SafetensorsName();   // the masters (F32 for a BF16 arena)
        foreach (var p in model.Layout.Parameters)
        {
            foreach (var r in layout.Owned)
            {
                long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
                if (lo >= hi) continue;
                var shape = new Shape((int)(hi - lo));
                long start = lo - p.Offset, at = r.ShardOffset + (lo - r.ArenaOffset);
                var (masterBackend, masters) = opt.MasterOf(r);
                Add(writer, $"value/{start}/{p.Name}", masterBackend, masters.Narrow(lo - r.ArenaOffset, shape));
                Add(writer, $"m/{start}/{p.Name}", stateBackend, opt.M.Narrow(at, shape));
                Add(writer, $"v/{start}/{p.Name}", stateBackend, opt.V.Narrow(at, shape));
            }
        }
        writer.Write(path);
    }

    private static DataParallelism Strategy(Trainer trainer) => trainer.Parallelism as DataParallelism ?? throw new ArgumentException(
        "ShardedCheckpoint: the trainer has no data-parallel strategy; a one-device run saves with TrainingCheckpoint");

    private static void Add(SafetensorsWriter writer, string name, IBackend backend, Tensor view)
    {
        if (view.DType == DType.F64) writer.Add(name, view.Shape, backend.ToArray<double>(view));
        else writer.Add(name, view.Shape, backend.ToArray<float>(view));
    }

    private static void FlushToDisk(string file)
    {
        using var s = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        s.Flush(flushToDisk: true);
    }
}
