using System.Globalization;
using System.Text.Json;
using Tessera.Distributed;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;

namespace Tessera.Training.Parallel;

/// <summary>
/// Checkpoints of parallel runs (data parallelism and ZeRO, tensor and pipeline parallelism, any mix), in one directory of a
/// <see cref="CheckpointStore"/>: every rank writes "zero_shard_R_of_W.safetensors" with the master values and AdamW
/// moments of the elements it owns, named by canonical parameter and by element of the rank's local (tensor-parallel)
/// tensor ("value/START/NAME", "m/START/NAME", "v/START/NAME"); rank 0 adds the whole model as a Hugging Face directory
/// (F32), trainer_state.json and parallel.json, which records the saving layout and every parameter's global shape and
/// <see cref="Placement"/>. Loading puts each parameter's pieces back into the whole tensor through the saved placements
/// and deals it out again through the loading model's own, so a checkpoint saved at any tp x dp x pp and ZeRO stage loads at
/// any other (one device included), exactly. A pipeline stage writes the parameters of its own units (the last stage's copy of
/// a tied token embedding is not written: the first stage's table is the parameter, and loading gives it to both), and
/// parallel.json lists every parameter of the whole model. Under expert parallelism each rank's experts are parameters of their
/// own global names (replicated placement, whole on their holders): the first expert-data-parallel replica writes each once, and
/// the checkpoint is that of the whole model, loading into one device or any ep. One manifest covers every file.
/// <para>
/// Mixed precision (a BF16 model): the "value" pieces and the Hugging Face weights are the F32 masters, never the BF16
/// copy, and the moments are F32. Each rank writes from wherever its masters live (the host shard under offload; split masters,
/// <see cref="MasterWeights.Split"/>, joined piece by piece from the values and low words, so the file is the same either way
/// and a run of either kind resumes from it: loading writes the masters and splits them where the loading run keeps them split).
/// trainer_state.json records the model's dtype, and a checkpoint loads only into a run of the same dtype.
/// Rank 0 assembles the Hugging Face export from the shard files (ranks must share the checkpoint folder), one parameter
/// at a time; loading likewise reads one parameter at a time.
/// </para>
/// </summary>
public static class ShardedCheckpoint
{
    /// <summary>Name of rank 0's description of the saving layout and the placements.</summary>
    public const string LayoutFile = "parallel.json";

    /// <summary>The layout file of checkpoints saved before tensor parallelism (data parallelism only): still read.</summary>
    public const string LegacyLayoutFile = "zero.json";

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>Shard file name of world rank <paramref name="rank"/> of <paramref name="worldSize"/>.</summary>
    public static string ShardFile(int rank, int worldSize) => $"zero_shard_{rank:D5}_of_{worldSize:D5}.safetensors";

    /// <summary>Whether <paramref name="directory"/> holds a sharded checkpoint (rather than a one-device one).</summary>
    public static bool IsSharded(string directory) =>
        File.Exists(Path.Combine(directory, LayoutFile)) || File.Exists(Path.Combine(directory, LegacyLayoutFile));

    /// <summary>
    /// Collective over every rank of the run (the trainer's data-parallel group and the model's tensor-parallel group): each
    /// rank writes its shard beside the store; rank 0 moves them into the store's temporary directory, exports the whole
    /// model, writes the state and the layout, and the store writes the manifest and renames the directory into place.
    /// Returns the checkpoint directory.
    /// </summary>
    public static string Save(CheckpointStore store, Trainer trainer, string tokenizer)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(trainer);
        var rank = RankState.Of(trainer);
        var model = trainer.Model;
        Directory.CreateDirectory(store.Root);
        string final = Path.Combine(store.Root, CheckpointStore.StepName(trainer.Step));
        string shardName = ShardFile(rank.WorldRank, rank.WorldSize);
        string Staged(string name) => Path.Combine(store.Root, $".{CheckpointStore.StepName(trainer.Step)}.{name}.tmp");
        try
        {
            WriteShard(Staged(shardName), rank, model, trainer);
            FlushToDisk(Staged(shardName));
            rank.Barrier();                                          // every shard is on disk before rank 0 reads them
            if (rank.WorldRank == 0)
            {
                store.Save(trainer.Step, dir =>
                {
                    var files = Enumerable.Range(0, rank.WorldSize).Select(r => ShardFile(r, rank.WorldSize)).ToArray();
                    foreach (var name in files)
                    {
                        if (!File.Exists(Staged(name)))
                            throw new CheckpointException($"{Staged(name)}: a rank's shard is missing after the barrier; its disk may differ from rank 0's (ranks must share the checkpoint folder)");
                        File.Move(Staged(name), Path.Combine(dir, name));
                    }
                    // The whole model's parameters (a pipeline stage holds only some): their placements are this tp rank's, and the
                    // same on every pipeline stage.
                    var whole = model.WholeLayout.Parameters;
                    var layout = new ParallelCheckpointLayout(rank.WorldSize, rank.TensorSize, rank.DataSize, rank.Stage, files,
                        whole.ToDictionary(p => p.Name, p => new SavedPlacement(p.GlobalShape.ToArray(), p.Placement.ToString()), StringComparer.Ordinal),
                        rank.PipelineSize);
                    AtomicFile.WriteAllText(Path.Combine(dir, LayoutFile), JsonSerializer.Serialize(layout, Json));
                    using (var pieces = CheckpointPieces.Open(dir))
                    {
                        HuggingFaceModelDirectory.Export(dir, model.Config, whole.ToDictionary(
                            p => p.Name, p => new HostTensor(p.GlobalShape, Array.ConvertAll(pieces.Assemble(p.Name, p.GlobalShape).Value, x => (float)x)),
                            StringComparer.Ordinal));
                    }
                    var position = trainer.DataPosition;
                    var state = new TrainerState
                    {
                        Step = trainer.Step, OptimizerStep = trainer.Parallelism.StepCount,
                        DataShard = position.Shard, DataOffset = position.Offset, DataEpoch = position.Epoch,
                        Seed = trainer.Options.Seed, DType = model.DType.SafetensorsName(),
                        Model = model.Config, Options = trainer.Options, Tokenizer = tokenizer,
                    };
                    AtomicFile.WriteAllText(Path.Combine(dir, "trainer_state.json"), JsonSerializer.Serialize(state, Json));
                });
            }
            rank.Barrier();
        }
        finally
        {
            trainer.Parallelism.ReleaseAll();
        }
        return final;
    }

    /// <summary>
    /// Collective like <see cref="Save"/>: verifies the manifest, then every rank loads, parameter by parameter, the whole
    /// tensor from the pieces of every shard and keeps its own part of it under its own layout (the weights wherever it
    /// keeps them, the moments of the elements it owns), and the step, optimizer step and data position. Any saving layout
    /// loads into any loading layout of the same model and dtype: one device, tensor parallelism, ZeRO 0-3, offload.
    /// </summary>
    public static void Restore(string directory, Trainer trainer)
    {
        ArgumentNullException.ThrowIfNull(directory);
        ArgumentNullException.ThrowIfNull(trainer);
        var rank = RankState.Of(trainer);
        var model = trainer.Model;
        var state = ReadChecked(directory, model);
        using (var pieces = CheckpointPieces.Open(directory))
        {
            foreach (var p in model.Layout.Parameters)
            {
                var whole = pieces.Assemble(p.Name, p.GlobalShape);
                trainer.Parallelism.WriteWeights(p, p.LocalValues(whole.Value));
                var m = p.LocalValues(whole.M);
                var v = p.LocalValues(whole.V);
                foreach (var r in rank.Owned)
                {
                    long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
                    if (lo >= hi) continue;
                    var shape = new Shape((int)(hi - lo));
                    long at = r.ShardOffset + (lo - r.ArenaOffset);
                    HostValues.Write(rank.StateBackend, m.AsSpan((int)(lo - p.Offset), (int)(hi - lo)), rank.M.Narrow(at, shape));
                    HostValues.Write(rank.StateBackend, v.AsSpan((int)(lo - p.Offset), (int)(hi - lo)), rank.V.Narrow(at, shape));
                }
            }
        }
        trainer.Parallelism.MarkWeightsWritten();
        trainer.Parallelism.ReleaseAll();
        trainer.Step = state.Step;
        trainer.Parallelism.StepCount = state.OptimizerStep;
        trainer.DataPosition = new DataPosition(state.DataShard, state.DataOffset, state.DataEpoch);
        rank.Barrier();
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

    private static void WriteShard(string path, RankState rank, Transformer model, Trainer trainer)
    {
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "tessera-parallel-shard";
        writer.Metadata["rank"] = rank.WorldRank.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["world_size"] = rank.WorldSize.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["tp_rank"] = rank.TensorRank.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["tp_size"] = rank.TensorSize.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["stage"] = rank.Stage.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["pp_rank"] = rank.PipelineRank.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["pp_size"] = rank.PipelineSize.ToString(CultureInfo.InvariantCulture);
        writer.Metadata["dtype"] = model.DType.SafetensorsName();
        writer.Metadata["value_dtype"] = (model.DType is DType.BF16 or DType.F16 ? DType.F32 : model.DType).SafetensorsName();
        foreach (var p in model.Layout.Parameters)
        {
            if (ReferenceEquals(p, model.TiedEmbeddingCopy)) continue;   // the first stage writes the tied table
            foreach (var r in rank.Saved)
            {
                long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
                if (lo >= hi) continue;
                var shape = new Shape((int)(hi - lo));
                long start = lo - p.Offset, at = r.ShardOffset + (lo - r.ArenaOffset);
                rank.ReadMasters(r, lo - r.ArenaOffset, (int)(hi - lo), (masterBackend, masters) => Add(writer, $"value/{start}/{p.Name}", masterBackend, masters));
                Add(writer, $"m/{start}/{p.Name}", rank.StateBackend, rank.M.Narrow(at, shape));
                Add(writer, $"v/{start}/{p.Name}", rank.StateBackend, rank.V.Narrow(at, shape));
            }
        }
        writer.Write(path);
    }

    private static int Add(SafetensorsWriter writer, string name, IBackend backend, Tensor view)
    {
        if (view.DType == DType.F64) writer.Add(name, view.Shape, backend.ToArray<double>(view));
        else writer.Add(name, view.Shape, backend.ToArray<float>(view));
        return 0;
    }

    private static void FlushToDisk(string file)
    {
        using var s = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        s.Flush(flushToDisk: true);
    }

    /// <summary>
    /// What a rank saves and restores, whatever its strategy: the arena ranges it owns, where their masters and moments
    /// live, and its place on the mesh (world rank = tp rank + tp x (dp rank + dp x pp rank), Megatron's order).
    /// </summary>
    private sealed class RankState
    {
        private ProcessGroup? _data, _tensor, _pipeline, _expertData;
        private IReadOnlyList<OwnedRange> _experts = [];

        public required IReadOnlyList<OwnedRange> Owned { get; init; }
        /// <summary>Reads elements [start, + length) of an owned range's masters (start relative to the range): a view, or joined split masters.</summary>
        public required Func<OwnedRange, long, int, Func<IBackend, Tensor, int>, int> ReadMasters { get; init; }
        public required Tensor M { get; init; }
        public required Tensor V { get; init; }
        public required IBackend StateBackend { get; init; }
        public required int Stage { get; init; }
        public int TensorRank => _tensor?.Rank ?? 0;
        public int TensorSize => _tensor?.Size ?? 1;
        public int DataSize => _data?.Size ?? 1;
        public int PipelineRank => _pipeline?.Rank ?? 0;
        public int PipelineSize => _pipeline?.Size ?? 1;
        public int WorldRank => TensorRank + TensorSize * ((_data?.Rank ?? 0) + DataSize * PipelineRank);
        public int WorldSize => TensorSize * DataSize * PipelineSize;

        /// <summary>
        /// The ranges this rank writes: its owned ones, except under plain data parallelism (stage 0), where every data-parallel
        /// rank owns the whole arena and holds the same values; there data-parallel rank 0 alone writes them, once. Under expert
        /// parallelism the other ranks of the first expert-data-parallel replica (dp ranks 1 .. ep-1, each holding other experts)
        /// also write their experts' ranges, so every expert of the whole model is written once, named by its global index.
        /// </summary>
        public IReadOnlyList<OwnedRange> Saved => Stage != 0 || (_data?.Rank ?? 0) == 0 ? Owned : _expertData is { Rank: 0 } ? _experts : [];

        /// <summary>The parts of <paramref name="owned"/> that hold the rank's expert parameters (expert parallelism).</summary>
        private static List<OwnedRange> ExpertParts(IReadOnlyList<OwnedRange> owned, Transformer model)
        {
            var names = model.Layers.ExpertParameters;
            var parts = new List<OwnedRange>();
            foreach (var p in model.Layout.Parameters.Where(p => names.Contains(p.Name)))
                foreach (var r in owned)
                {
                    long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
                    if (lo < hi) parts.Add(r with { ArenaOffset = lo, Length = hi - lo, ShardOffset = r.ShardOffset + (lo - r.ArenaOffset) });
                }
            return parts;
        }

        /// <summary>
        /// Every rank of the run has arrived: the tensor-parallel peers, then the data-parallel ones (whose own tensor-parallel
        /// peers arrived before them), then the pipeline stages (whose tp x dp planes arrived before them).
        /// </summary>
        public void Barrier()
        {
            _tensor?.Barrier().Wait();
            _data?.Barrier().Wait();
            _pipeline?.Barrier().Wait();
        }

        public static RankState Of(Trainer trainer)
        {
            var state = OfStrategy(trainer);
            state._pipeline = trainer.Model.Pipeline?.Group;
            return state;
        }

        private static RankState OfStrategy(Trainer trainer)
        {
            var tensor = trainer.Model.TensorParallelism?.Group;
            switch (trainer.Parallelism)
            {
                case DataParallelism dp:
                    return new RankState
                    {
                        Owned = dp.Layout.Owned, ReadMasters = dp.Optimizer.ReadMaster, M = dp.Optimizer.M, V = dp.Optimizer.V,
                        StateBackend = dp.Optimizer.Host ?? trainer.Model.Backend, Stage = (int)dp.Options.Stage, _data = dp.Group, _tensor = tensor,
                        _expertData = dp.ExpertData, _experts = dp.ExpertData is null ? [] : ExpertParts(dp.Layout.Owned, trainer.Model),
                    };
                case SingleDevice single:
                    // One device (or one tensor-parallel rank without data parallelism): it owns its whole arena, whose
                    // moments are laid out like the arena.
                    var arena = single.Optimizer.Arena;
                    const long maxRange = 1L << 30;   // views are int-sized tensors
                    var owned = new List<OwnedRange>();
                    for (long start = 0; start < arena.Length; start += maxRange)
                        owned.Add(new OwnedRange(0, start, Math.Min(maxRange, arena.Length - start), start, WeightDecay: false));
                    return new RankState
                    {
                        Owned = owned,
                        ReadMasters = (r, start, length, read) =>
                        {
                            var shape = new Shape(length);
                            long at = r.ArenaOffset + start;
                            return arena.LowWords is { } low
                                ? SplitMasterRange.Read(arena.Backend, arena.Values.Narrow(at, shape), low.Narrow(at, shape), m => read(arena.Backend, m))
                                : read(arena.Backend, (arena.Masters ?? arena.Values).Narrow(at, shape));
                        },
                        M = single.Optimizer.M, V = single.Optimizer.V, StateBackend = arena.Backend, Stage = 0, _tensor = tensor,
                    };
                default:
                    throw new NotSupportedException($"ShardedCheckpoint: strategy {trainer.Parallelism.GetType().Name} is not supported");
            }
        }
    }
}
