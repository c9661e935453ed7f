using System.Text.Json;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Data;

namespace Tessera.Training.Checkpoints;

/// <summary>
/// Saves and restores a training run: the model as a Hugging Face directory (config.json,
/// model.safetensors), the AdamW moments by canonical parameter name (optimizer.safetensors)
/// and trainer_state.json; exact, so that a resumed run continues bit for bit.
/// </summary>
public static class TrainingCheckpoint
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>Writes a checkpoint of the trainer's current step into <paramref name="store"/>; returns its directory.</summary>
    public static string Save(CheckpointStore store, Transformer model, Trainer trainer, string tokenizer)
    {
        // Hugging Face weights are written in F32; an F64 run (a numerical check) could not resume exactly from them.
        // A BF16 run keeps F32 masters, which are what is saved (and restored, with the BF16 copy cast from them).
        var single = Single(trainer);
        if (model.Parameters.MasterDType != DType.F32)
            throw new CheckpointException($"checkpoints hold F32 weights; this run trains in {model.Parameters.DType}. Train in f32 or bf16 to save checkpoints");
        return store.Save(trainer.Step, dir =>
        {
            HuggingFaceModelDirectory.Export(dir, model.Config, model.Parameters.Parameters, model.Parameters.Backend);
            WriteOptimizer(Path.Combine(dir, "optimizer.safetensors"), model.Parameters, single);
            var position = trainer.DataPosition;
            var state = new TrainerState
            {
                Step = trainer.Step,
                OptimizerStep = single.StepCount,
                DataShard = position.Shard,
                DataOffset = position.Offset,
                DataEpoch = position.Epoch,
                Seed = trainer.Options.Seed,
                DType = model.Parameters.DType.SafetensorsName(),
                Model = model.Config,
                Options = trainer.Options,
                Tokenizer = tokenizer,
            };
            AtomicFile.WriteAllText(Path.Combine(dir, "trainer_state.json"), JsonSerializer.Serialize(state, Json));
        });
    }

    /// <summary>Verifies <paramref name="directory"/> against its manifest and loads weights, moments and position.</summary>
    public static void Restore(string directory, Transformer model, Trainer trainer)
    {
        CheckpointManifest.Read(directory).Verify(directory);
        var state = ReadState(directory);
        if (state.Model != model.Config)
            throw new CheckpointException($"{Path.Combine(directory, "trainer_state.json")}: the checkpoint's model ({Describe(state.Model)}) differs from this run's ({Describe(model.Config)})");
        if (state.DType != model.Parameters.DType.SafetensorsName())
            throw new CheckpointException($"{directory}: saved in {state.DType}, this run uses {model.Parameters.DType.SafetensorsName()}");
        using (var hf = HuggingFaceModelDirectory.Open(directory, model.Config))
            hf.LoadInto(model.Parameters.Parameters, model.Parameters.Backend);
        var single = Single(trainer);
        ReadOptimizer(Path.Combine(directory, "optimizer.safetensors"), model.Parameters, single);
        trainer.Step = state.Step;
        single.StepCount = state.OptimizerStep;
        trainer.DataPosition = new DataPosition(state.DataShard, state.DataOffset, state.DataEpoch);
    }

    /// <summary>Reads trainer_state.json of a checkpoint.</summary>
    public static TrainerState ReadState(string directory)
    {
        var path = Path.Combine(directory, "trainer_state.json");
        if (!File.Exists(path)) throw new CheckpointException($"{path}: missing; {directory} is not a training checkpoint");
        try
        {
            return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path)) ?? throw new CheckpointException($"{path}: empty");
        }
        catch (JsonException e) { throw new CheckpointException($"{path}: not valid JSON ({e.Message})", e); }
    }

    private static SingleDevice Single(Trainer trainer) => trainer.Parallelism as SingleDevice ?? throw new ArgumentException(
        "TrainingCheckpoint: the trainer is data-parallel; its checkpoints are sharded (ShardedCheckpoint)");

    private static string Describe(TransformerConfig c) => $"{c.Family} L={c.Layers} C={c.Embedding} H={c.Heads} V={c.VocabSize}";

    private static void WriteOptimizer(string path, ParameterArena arena, SingleDevice trainer)
    {
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "tessera-adamw";
        foreach (var p in arena.Parameters)
        {
            foreach (var (prefix, moments) in new[] { ("m.", trainer.Optimizer.M), ("v.", trainer.Optimizer.V) })
            {
                var view = moments.Narrow(p.Offset, p.Shape);
                if (arena.MasterDType == DType.F64) writer.Add(prefix + p.Name, p.Shape, arena.Backend.ToArray<double>(view));
                else writer.Add(prefix + p.Name, p.Shape, arena.Backend.ToArray<float>(view));
            }
        }
        writer.Write(path);
    }

    private static void ReadOptimizer(string path, ParameterArena arena, SingleDevice trainer)
    {
        using var file = SafetensorsFile.Open(path);
        foreach (var p in arena.Parameters)
        {
            foreach (var (prefix, moments) in new[] { ("m.", trainer.Optimizer.M), ("v.", trainer.Optimizer.V) })
            {
                var name = prefix + p.Name;
                if (!file.Contains(name)) throw new CheckpointException($"{path}: missing optimizer state '{name}'");
                var info = file[name];
                if (info.Shape != p.Shape) throw new CheckpointException($"{path}: '{name}' has shape {info.Shape}, the model expects {p.Shape}");
                var view = moments.Narrow(p.Offset, p.Shape);
                if (arena.MasterDType == DType.F64) arena.Backend.CopyFromHost<double>(file.ReadAsDouble(name), view);
                else arena.Backend.CopyFromHost<float>(file.ReadAsSingle(name), view);
            }
        }
    }
}
