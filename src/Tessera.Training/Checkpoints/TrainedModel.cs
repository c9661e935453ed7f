using Tessera.Models;
using Tessera.Nn;
using Tessera.Nn.Quantization;
using Tessera.Tensors;

namespace Tessera.Training.Checkpoints;

/// <summary>
/// Loading a model to generate or serve from: a Tessera checkpoint (verified against its manifest, read with its own
/// configuration), a run directory or its checkpoints folder (their latest checkpoint), or a Hugging Face model directory.
/// Every load refuses weights that are not finite, naming the tensor: a model trained into NaN would otherwise generate
/// garbage (NUL bytes) without a word.
/// </summary>
public static class TrainedModel
{
    /// <summary>
    /// The model directory <paramref name="path"/> names: itself when it holds config.json, else the latest checkpoint
    /// of the run (<c>PATH/checkpoints/latest</c>) or checkpoints folder (<c>PATH/latest</c>) it is.
    /// </summary>
    public static string Resolve(string path)
    {
        if (!Directory.Exists(path)) throw new DirectoryNotFoundException($"{path}: no such directory");
        if (File.Exists(Path.Combine(path, "config.json"))) return path;
        foreach (var store in new[] { path, Path.Combine(path, "checkpoints") })
            if (File.Exists(Path.Combine(store, "latest")))
                return new CheckpointStore(store).Latest()!;
        throw new FileNotFoundException($"{path}: neither a model directory (config.json) nor a run with checkpoints (checkpoints/latest)");
    }

    /// <summary>
    /// Checks the PEFT LoRA adapter in <paramref name="adapter"/> against the model <paramref name="path"/> names (resolved as
    /// <see cref="Load"/> resolves it; a checkpoint with its own configuration) before any weight is read: what generate and serve
    /// do first, so that a bad adapter is refused before anything loads. Returns the adapter, for the load log.
    /// </summary>
    public static Tessera.Models.Adapters.LoraWeightMerge CheckAdapter(string path, string adapter)
    {
        var directory = Resolve(path);
        var expected = IsCheckpoint(directory) ? TrainingCheckpoint.ReadState(directory).Model : null;
        return PretrainedModel.CheckAdapter(directory, adapter, expected);
    }

    /// <summary>Whether <paramref name="directory"/> is a Tessera training checkpoint (it has trainer_state.json).</summary>
    public static bool IsCheckpoint(string directory) => File.Exists(Path.Combine(directory, "trainer_state.json"));

    /// <summary>
    /// Resolves <paramref name="path"/> (<see cref="Resolve"/>), verifies a checkpoint's manifest (size and SHA-256 of
    /// every file), loads the weights onto <paramref name="backend"/> in <paramref name="dtype"/> and checks that they are
    /// finite. Returns the model, the directory it came from and, for a checkpoint, the tokenizer it was trained with.
    /// With <paramref name="tensorParallelism"/> the model is this rank's part (its slices of the split weights); with
    /// <paramref name="quantization"/> an inference model whose linear layers' weights are int8 (<see cref="PretrainedModel.Load"/>);
    /// with <paramref name="adapter"/> a PEFT LoRA adapter merged into the weights as they are read, before all that; with
    /// <paramref name="loraModules"/> PEFT adapters served unmerged over it (multi-LoRA, <see cref="Transformer.ServedAdapters"/>) in the
    /// slots of <paramref name="loraSlots"/>.
    /// </summary>
    public static (Transformer Model, string Directory, string? Tokenizer) Load(string path, IBackend backend, DType dtype,
        Tessera.Nn.Parallel.TensorParallelism? tensorParallelism = null, WeightQuantization quantization = WeightQuantization.None,
        string? adapter = null, IReadOnlyList<Tessera.Models.Adapters.LoraModule>? loraModules = null,
        Tessera.Models.Adapters.LoraSlotOptions? loraSlots = null)
    {
        var directory = Resolve(path);
        TrainerState? state = null;
        if (IsCheckpoint(directory))
        {
            CheckpointManifest.Read(directory).Verify(directory);
            state = TrainingCheckpoint.ReadState(directory);
        }
        else if (File.Exists(Path.Combine(directory, "manifest.json")))
            CheckpointManifest.Read(directory).Verify(directory);
        var model = PretrainedModel.Load(directory, backend, dtype, state?.Model, tensorParallelism, quantization, adapter, loraModules, loraSlots);
        EnsureFinite(model.Layout.Parameters, backend, directory);
        return (model, directory, state?.Tokenizer);
    }

    /// <summary>
    /// Throws <see cref="CheckpointException"/> naming the first parameter (and element) that holds a NaN or an infinity.
    /// One device-side sum per parameter and one read of them all; only a model that fails is read element by element.
    /// </summary>
    public static void EnsureFinite(IReadOnlyList<Parameter> list, IBackend backend, string source)
    {
        // A sum is NaN or infinite when any element is (and, for absurd weights near 1e38, when it overflows: the element
        // scan below then finds nothing and the model is accepted).
        var sums = backend.Zeros(new Shape(list.Count), DType.F32);
        for (int i = 0; i < list.Count; i++)
        {
            var slot = sums.Narrow(i, new Shape(1));
            list[i].ReadMasterOrValue(w => { backend.Sum(w, slot); return 0; });
        }
        var host = backend.ToArray<float>(sums);
        for (int i = 0; i < list.Count; i++)
        {
            if (float.IsFinite(host[i])) continue;
            var values = list[i].ReadMasterOrValue(w => ReadAsDouble(backend, w));
            int bad = Array.FindIndex(values, v => !double.IsFinite(v));
            if (bad >= 0)
                throw new CheckpointException($"{source}: weight '{list[i].Name}' {list[i].Shape} holds {values[bad]} at element {bad} " +
                    $"({values.Count(v => !double.IsFinite(v))} of {values.Length} elements are not finite); the model cannot be used: " +
                    "it was saved from a run that diverged, or the file is damaged");
        }
    }

    private static double[] ReadAsDouble(IBackend backend, Tensor t) => t.DType switch
    {
        DType.F32 => Array.ConvertAll(backend.ToArray<float>(t), x => (double)x),
        DType.F64 => backend.ToArray<double>(t),
        DType.BF16 => Array.ConvertAll(backend.ToArray<BFloat16>(t), x => (double)x.ToSingle()),
        DType.F16 => Array.ConvertAll(backend.ToArray<Half>(t), x => (double)x),
        _ => throw new NotSupportedException($"weights of dtype {t.DType}"),
    };
}
