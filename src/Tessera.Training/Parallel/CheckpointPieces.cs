using System.Globalization;
using System.Text.Json;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Checkpoints;

namespace Tessera.Training.Parallel;

/// <summary>
/// The shard files of a sharded checkpoint, indexed by parameter, so that one whole parameter at a time (values and
/// moments, in F64) can be put back together from its pieces: the pieces of each saving tensor-parallel rank fill its local
/// tensor (every element exactly once), and the saved placement puts each local tensor into its places of the whole one.
/// </summary>
internal sealed class CheckpointPieces : IDisposable
{
    private readonly string _directory;
    private readonly ParallelCheckpointLayout _layout;
    private readonly List<SafetensorsFile> _files = [];
    private readonly Dictionary<string, List<(int File, int TensorRank, string Kind, long Start, string Tensor)>> _pieces = new(StringComparer.Ordinal);

    private CheckpointPieces(string directory, ParallelCheckpointLayout layout)
    {
        _directory = directory;
        _layout = layout;
    }

    /// <summary>The whole values and AdamW moments of one parameter.</summary>
    public sealed record Whole(double[] Value, double[] M, double[] V);

    /// <summary>Opens the layout (parallel.json, or a data-parallel checkpoint's zero.json) and indexes every shard file.</summary>
    public static CheckpointPieces Open(string directory)
    {
        var layout = ReadLayout(directory);
        var pieces = new CheckpointPieces(directory, layout);
        try
        {
            for (int f = 0; f < layout.Files.Length; f++)
            {
                var path = Path.Combine(directory, layout.Files[f]);
                var file = SafetensorsFile.Open(path);
                pieces._files.Add(file);
                int tensorRank = file.Metadata.TryGetValue("tp_rank", out var t) ? int.Parse(t, CultureInfo.InvariantCulture) : 0;
                foreach (var info in file.Tensors)
                {
                    var parts = info.Name.Split('/', 3);
                    if (parts.Length != 3 || !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long start))
                        throw new CheckpointException($"{path}: tensor '{info.Name}' is not named KIND/START/PARAMETER");
                    if (parts[0] is not ("value" or "m" or "v"))
                        throw new CheckpointException($"{path}: tensor '{info.Name}' has unknown kind '{parts[0]}' (value, m or v)");
                    if (!pieces._pieces.TryGetValue(parts[2], out var list)) pieces._pieces[parts[2]] = list = [];
                    list.Add((f, tensorRank, parts[0], start, info.Name));
                }
            }
            return pieces;
        }
        catch
        {
            pieces.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Parameter <paramref name="name"/> whole, checked to have <paramref name="globalShape"/> (the loading model's) and to
    /// be covered exactly once by each saving tensor-parallel rank's pieces.
    /// </summary>
    public Whole Assemble(string name, Shape globalShape)
    {
        if (!_layout.Parameters.TryGetValue(name, out var saved) || !_pieces.TryGetValue(name, out var pieces))
            throw new CheckpointException($"{_directory}: the checkpoint has no parameter '{name}'");
        var shape = new Shape(saved.Shape);
        if (shape != globalShape)
            throw new CheckpointException($"{_directory}: parameter '{name}' was saved with shape {shape}, this model's is {globalShape}");
        Placement placement;
        try { placement = Placement.Parse(saved.Placement); }
        catch (FormatException e) { throw new CheckpointException($"{Path.Combine(_directory, ShardedCheckpoint.LayoutFile)}: parameter '{name}': {e.Message}", e); }
        int tp = _layout.TensorParallel;
        var whole = new Whole(new double[shape.NumElements], new double[shape.NumElements], new double[shape.NumElements]);
        // A replicated parameter is the same on every tensor-parallel rank: rank 0's copy is the parameter.
        int ranks = placement.IsReplicated ? 1 : tp;
        for (int t = 0; t < ranks; t++)
        {
            long localCount = placement.LocalShape(shape, t, tp).NumElements;
            var local = new Whole(new double[localCount], new double[localCount], new double[localCount]);
            var covered = new int[localCount];
            foreach (var (file, tensorRank, kind, start, tensor) in pieces)
            {
                if (tensorRank != t) continue;
                var data = _files[file].ReadAsDouble(tensor);
                if (start + data.Length > localCount)
                    throw new CheckpointException($"{_files[file].Path}: '{tensor}' covers [{start}, {start + data.Length}) past the {localCount} elements of tensor-parallel rank {t}'s '{name}'");
                var target = kind switch { "value" => local.Value, "m" => local.M, _ => local.V };
                data.CopyTo(target, start);
                if (kind == "value") for (long i = start; i < start + data.Length; i++) covered[i]++;
            }
            int bad = Array.FindIndex(covered, c => c != 1);
            if (bad >= 0)
                throw new CheckpointException($"{_directory}: element {bad} of tensor-parallel rank {t}'s '{name}' is stored {covered[bad]} times across the shards (expected once); the checkpoint is incomplete or inconsistent");
            placement.ScatterToGlobal<double>(shape, t, tp, local.Value, whole.Value);
            placement.ScatterToGlobal<double>(shape, t, tp, local.M, whole.M);
            placement.ScatterToGlobal<double>(shape, t, tp, local.V, whole.V);
        }
        return whole;
    }

    private static ParallelCheckpointLayout ReadLayout(string directory)
    {
        var path = Path.Combine(directory, ShardedCheckpoint.LayoutFile);
        var legacy = Path.Combine(directory, ShardedCheckpoint.LegacyLayoutFile);
        try
        {
            if (File.Exists(path))
                return JsonSerializer.Deserialize<ParallelCheckpointLayout>(File.ReadAllText(path)) ?? throw new CheckpointException($"{path}: empty");
            if (!File.Exists(legacy))
                throw new CheckpointException($"{path}: missing; {directory} is not a sharded (parallel) checkpoint");
            // Saved before tensor parallelism: every parameter replicated, shapes from the model's configuration (checked by the caller).
            using var doc = JsonDocument.Parse(File.ReadAllText(legacy));
            var files = doc.RootElement.GetProperty("files").EnumerateArray().Select(e => e.GetString()!).ToArray();
            int stage = doc.RootElement.GetProperty("stage").GetInt32();
            var state = TrainingCheckpoint.ReadState(directory);
            var model = new Models.Transformer(state.Model, new Tensors.Cpu.CpuBackend(1), DType.F32, ArenaStorage.Deferred);
            var parameters = model.Layout.Parameters.ToDictionary(p => p.Name, p => new SavedPlacement(p.GlobalShape.ToArray(), "replicated"), StringComparer.Ordinal);
            return new ParallelCheckpointLayout(files.Length, 1, files.Length, stage, files, parameters);
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"{(File.Exists(path) ? path : legacy)}: not valid JSON ({e.Message})", e);
        }
        catch (KeyNotFoundException e)
        {
            throw new CheckpointException($"{legacy}: missing field ({e.Message})", e);
        }
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
