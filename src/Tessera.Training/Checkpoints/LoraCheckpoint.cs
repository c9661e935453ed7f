using System.Text.Json;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Training.Data;
using Tessera.Training.Parallel;

namespace Tessera.Training.Checkpoints;

/// <summary>
/// Checkpoints of a LoRA run in one directory of a <see cref="CheckpointStore"/> (atomic: written aside, manifest last, renamed):
/// the adapter in PEFT's layout (adapter_config.json, adapter_model.safetensors: the directory is itself an adapter peft loads),
/// lora_state.safetensors with the adapters' exact masters and AdamW moments in the master dtype ("value/NAME", "m/NAME",
/// "v/NAME" by canonical adapter name), and trainer_state.json with the step, the optimizer's step, the data position, the
/// options, the model's configuration and the LoRA settings with the dropout's random state (<see cref="LoraState"/>). The
/// frozen base is not written: it is the base model directory, named in the state. Under data parallelism or ZeRO the
/// masters and moments are gathered to rank 0, and under tensor parallelism each tp rank's share is gathered too, so rank 0
/// writes the whole adapters (global shapes, the same file one device writes) and a checkpoint loads at any number of ranks,
/// stage and tp; restoring puts each rank's part (its share of its tensor-parallel split) back where its strategy keeps it. A
/// restored run continues bit for bit.
/// </summary>
public static class LoraCheckpoint
{
    /// <summary>The masters and moments file.</summary>
    public const string StateFile = "lora_state.safetensors";

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>
    /// Writes a checkpoint of the trainer's current step (collective under data parallelism: every rank calls it at the same
    /// point; rank 0 writes). <paramref name="baseModel"/> is the base model directory; <paramref name="tokenizer"/> what made
    /// the data. Returns the checkpoint directory.
    /// </summary>
    public static string Save(CheckpointStore store, Trainer trainer, LoraAdapters adapters, string baseModel, string tokenizer)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(trainer);
        ArgumentNullException.ThrowIfNull(adapters);
        var whole = Gather(trainer, adapters);
        string final = Path.Combine(store.Root, CheckpointStore.StepName(trainer.Step));
        if (whole is null) return final;                             // not the writing rank: its part was gathered
        var masterDType = adapters.Arena.MasterDType;
        store.Save(trainer.Step, dir =>
        {
            PeftAdapter.WriteFiles(dir, adapters, baseModel, p => whole[p].Value);
            var writer = new SafetensorsWriter();
            writer.Metadata["format"] = "tessera-lora";
            foreach (var p in adapters.Layout.Parameters)
                foreach (var (prefix, slice) in new[] { ("value/", whole[p].Value), ("m/", whole[p].M), ("v/", whole[p].V) })
                {
                    if (masterDType == DType.F64) writer.Add(prefix + p.Name, p.GlobalShape, slice);
                    else writer.Add(prefix + p.Name, p.GlobalShape, Array.ConvertAll(slice, x => (float)x));
                }
            writer.Write(Path.Combine(dir, StateFile));
            var position = trainer.DataPosition;
            var o = adapters.Options;
            var state = new TrainerState
            {
                Step = trainer.Step, OptimizerStep = trainer.Parallelism.StepCount,
                DataShard = position.Shard, DataOffset = position.Offset, DataEpoch = position.Epoch,
                Seed = trainer.Options.Seed, DType = trainer.Model.DType.SafetensorsName(), Model = trainer.Model.Config, Options = trainer.Options, Tokenizer = tokenizer,
                Lora = new LoraState
                {
                    Rank = o.Rank, Alpha = o.Alpha, Dropout = o.Dropout, Targets = o.Targets.Select(t => t.Name).ToList(), BaseModel = baseModel,
                    DataParallel = trainer.Parallelism.Group?.Size ?? 1, TensorParallel = trainer.Model.TensorParallelism?.Size ?? 1, MasksDrawn = adapters.MasksDrawn,
                    BaseQuantization = trainer.Model.Layout.Storage is Nn.Quantization.QuantizedParameterStorage q ? q.Format.ToString().ToLowerInvariant() : "none",
                },
            };
            AtomicFile.WriteAllText(Path.Combine(dir, "trainer_state.json"), JsonSerializer.Serialize(state, Json));
        });
        return final;
    }

    /// <summary>
    /// Checks <paramref name="directory"/> against its manifest and against this run (a LoRA checkpoint of the same model,
    /// dtype, rank, alpha, dropout and targets: anything else is refused naming what differs, before anything is written),
    /// then loads the adapters' masters and moments into wherever the trainer's strategy keeps them, the step, the data
    /// position and the dropout's random state. Not collective.
    /// </summary>
    public static void Restore(string directory, Trainer trainer, LoraAdapters adapters)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        ArgumentNullException.ThrowIfNull(adapters);
        CheckpointManifest.Read(directory).Verify(directory);
        var state = TrainingCheckpoint.ReadState(directory);
        var lora = Check(directory, state, trainer.Model, adapters);
        string path = Path.Combine(directory, StateFile);
        if (!File.Exists(path)) throw new CheckpointException($"{path}: missing; a LoRA checkpoint holds the adapters' masters and moments there");
        var tensors = new Dictionary<(string, Parameter), double[]>();
        using (var file = SafetensorsFile.Open(path))
        {
            foreach (var p in adapters.Layout.Parameters)
                foreach (var prefix in new[] { "value/", "m/", "v/" })
                {
                    string name = prefix + p.Name;
                    if (!file.Contains(name)) throw new CheckpointException($"{path}: '{name}' is missing (this run's adapters have {p.Name})");
                    if (file[name].Shape != p.GlobalShape) throw new CheckpointException($"{path}: '{name}' is {file[name].Shape}; this run's adapter {p.Name} is {p.GlobalShape}");
                    tensors[(prefix, p)] = p.LocalValues(file.ReadAsDouble(name));   // this rank's share (all of it on one device)
                }
            var extra = file.Tensors.Select(t => t.Name).Except(tensors.Keys.Select(k => k.Item1 + k.Item2.Name), StringComparer.Ordinal).FirstOrDefault();
            if (extra is not null) throw new CheckpointException($"{path}: '{extra}' is no adapter of this run (its targets or layers differ)");
        }
        foreach (var p in adapters.Layout.Parameters)
        {
            trainer.Parallelism.WriteWeights(p, tensors[("value/", p)]);
            WriteMoments(trainer.Parallelism, p, tensors[("m/", p)], tensors[("v/", p)]);
        }
        trainer.Parallelism.MarkWeightsWritten();
        trainer.Step = state.Step;
        trainer.Parallelism.StepCount = state.OptimizerStep;
        trainer.DataPosition = new DataPosition(state.DataShard, state.DataOffset, state.DataEpoch);
        adapters.MasksDrawn = [.. lora.MasksDrawn];
    }

    /// <summary>
    /// The checkpoint's LoRA state after checking it fits this run's <paramref name="model"/> and <paramref name="adapters"/>;
    /// throws <see cref="CheckpointException"/> naming the first difference.
    /// </summary>
    public static LoraState Check(string directory, TrainerState state, Transformer model, LoraAdapters adapters)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(adapters);
        var where = Path.Combine(directory, "trainer_state.json");
        var lora = state.Lora ?? throw new CheckpointException($"{where}: not a LoRA checkpoint (it saved a full model); resume it without --lora");
        if (state.Model != model.Config)
            throw new CheckpointException($"{where}: the checkpoint's adapters are for another model ({Models.HuggingFace.HuggingFaceModelDirectory.ArchitectureMismatch(model.Config, state.Model) ?? "configuration differs"}); give the base model it was trained on ({lora.BaseModel})");
        if (state.DType != model.DType.SafetensorsName())
            throw new CheckpointException($"{where}: saved in {state.DType}, this run uses {model.DType.SafetensorsName()}");
        var o = adapters.Options;
        if (lora.Rank != o.Rank) throw new CheckpointException($"{where}: the checkpoint's adapters have r = {lora.Rank}, this run's r = {o.Rank}");
        var targets = o.Targets.Select(t => t.Name).ToList();
        if (!lora.Targets.SequenceEqual(targets))
            throw new CheckpointException($"{where}: the checkpoint's adapters are on {string.Join(",", lora.Targets)}, this run's on {string.Join(",", targets)}");
        if (lora.Alpha != o.Alpha) throw new CheckpointException($"{where}: the checkpoint's lora alpha is {lora.Alpha}, this run's {o.Alpha}");
        if (lora.Dropout != o.Dropout) throw new CheckpointException($"{where}: the checkpoint's lora dropout is {lora.Dropout}, this run's {o.Dropout}");
        if (lora.MasksDrawn.Count != adapters.Layers.Count)
            throw new CheckpointException($"{where}: masks_drawn lists {lora.MasksDrawn.Count} layers, this run adapts {adapters.Layers.Count}");
        return lora;
    }

    /// <summary>
    /// The whole adapters' masters and moments (F64, each parameter's global tensor) on the writing rank (rank 0 of the data- and
    /// tensor-parallel groups), null elsewhere. Collective: under data parallelism each tp rank's share is gathered to its dp rank 0
    /// through the strategy's unit gathers; under tensor parallelism those dp ranks 0 (one tp group) then all-gather their shares,
    /// and tp rank 0 puts each parameter together through its placement (a replicated factor from its own copy).
    /// </summary>
    private static Dictionary<Parameter, (double[] Value, double[] M, double[] V)>? Gather(Trainer trainer, LoraAdapters adapters)
    {
        var (values, m, v) = GatherLocal(trainer, adapters);
        if (values is null) return null;                             // a dp rank other than 0
        var tp = trainer.Model.TensorParallelism;
        double[][] valueShares = [values], mShares = [m!], vShares = [v!];
        if (tp is not null)
        {
            var backend = adapters.Arena.Backend;
            var dtype = adapters.Arena.MasterDType;
            valueShares = AllGather(tp.Group, backend, dtype, values);
            mShares = AllGather(tp.Group, backend, dtype, m!);
            vShares = AllGather(tp.Group, backend, dtype, v!);
            if (tp.Rank != 0) return null;
        }
        var whole = new Dictionary<Parameter, (double[], double[], double[])>();
        foreach (var p in adapters.Layout.Parameters)
            whole[p] = (Assemble(p, valueShares), Assemble(p, mShares), Assemble(p, vShares));
        return whole;
    }

    /// <summary>Parameter <paramref name="p"/>'s global tensor from every tp rank's arena-laid-out share (index = tp rank).</summary>
    private static double[] Assemble(Parameter p, double[][] shares)
    {
        if (p.Placement.IsReplicated || shares.Length == 1) return shares[0].AsSpan((int)p.Offset, (int)p.NumElements).ToArray();
        var global = new double[p.GlobalShape.NumElements];
        for (int rank = 0; rank < shares.Length; rank++)
            p.Placement.ScatterToGlobal<double>(p.GlobalShape, rank, shares.Length, shares[rank].AsSpan((int)p.Offset, (int)p.NumElements), global);
        return global;
    }

    /// <summary>Collective over <paramref name="group"/>: every rank's <paramref name="local"/> (the same length on each), index = rank; exact in <paramref name="dtype"/> (the master dtype the values were read from).</summary>
    private static double[][] AllGather(Tessera.Distributed.ProcessGroup group, IBackend backend, DType dtype, double[] local)
    {
        var input = backend.Allocate(new Shape(local.Length), dtype);
        var output = backend.Allocate(new Shape(local.Length * group.Size), dtype);
        try
        {
            HostValues.Write(backend, local, input);
            group.AllGather(input, output).Wait();
            var all = Read(backend, output);
            return Enumerable.Range(0, group.Size).Select(r => all.AsSpan(r * local.Length, local.Length).ToArray()).ToArray();
        }
        finally
        {
            input.Storage.Dispose();
            output.Storage.Dispose();
        }
    }

    /// <summary>This rank's adapters' masters and moments (F64, its local arena layout) on data-parallel rank 0; nulls elsewhere. Collective under data parallelism.</summary>
    private static (double[]? Values, double[]? M, double[]? V) GatherLocal(Trainer trainer, LoraAdapters adapters)
    {
        switch (trainer.Parallelism)
        {
            case SingleDevice single:
                if (!ReferenceEquals(single.Optimizer.Arena, adapters.Arena))
                    throw new ArgumentException("LoRA checkpoint: the trainer's optimizer updates another arena than the adapters'");
                var backend = adapters.Arena.Backend;
                return (Read(backend, adapters.Arena.Masters ?? adapters.Arena.Values), Read(backend, single.Optimizer.M), Read(backend, single.Optimizer.V));
            case DataParallelism dp:
                if (!ReferenceEquals(dp.Trained, adapters.Layout))
                    throw new ArgumentException("LoRA checkpoint: the trainer's strategy trains another layout than the adapters'");
                var values = dp.GatherMastersToHostF64();
                var moments = dp.GatherMomentsToHostF64();
                dp.ReleaseAll();
                return (values, moments?.M, moments?.V);
            default:
                throw new NotSupportedException($"LoRA checkpoint: strategy {trainer.Parallelism.GetType().Name} is not supported");
        }
    }

    private static double[] Read(IBackend backend, Tensor t) => t.DType == DType.F64
        ? backend.ToArray<double>(t)
        : Array.ConvertAll(backend.ToArray<float>(t.DType == DType.F32 ? t : backend.Contiguous(t, DType.F32)), x => (double)x);

    private static void WriteMoments(IDataParallelism parallelism, Parameter p, double[] m, double[] v)
    {
        switch (parallelism)
        {
            case SingleDevice single:
                var backend = single.Optimizer.Arena.Backend;
                HostValues.Write(backend, m, single.Optimizer.M.Narrow(p.Offset, p.Shape));
                HostValues.Write(backend, v, single.Optimizer.V.Narrow(p.Offset, p.Shape));
                break;
            case DataParallelism dp:
                foreach (var r in dp.Layout.Owned)
                {
                    long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
                    if (lo >= hi) continue;
                    var shape = new Shape((int)(hi - lo));
                    long at = r.ShardOffset + (lo - r.ArenaOffset);
                    var state = dp.Optimizer.Host ?? dp.Model.Backend;
                    HostValues.Write(state, m.AsSpan((int)(lo - p.Offset), (int)(hi - lo)), dp.Optimizer.M.Narrow(at, shape));
                    HostValues.Write(state, v.AsSpan((int)(lo - p.Offset), (int)(hi - lo)), dp.Optimizer.V.Narrow(at, shape));
                }
                break;
        }
    }
}
