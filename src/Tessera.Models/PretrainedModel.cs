using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Nn.Quantization;
using Tessera.Tensors;

namespace Tessera.Models;

/// <summary>Builds a <see cref="Transformer"/> from a Hugging Face model directory (or a Tessera checkpoint, which is one).</summary>
public static class PretrainedModel
{
    /// <summary>
    /// Reads config.json and the weights of <paramref name="directory"/> into a new model on <paramref name="backend"/>
    /// in <paramref name="dtype"/>. When <paramref name="expected"/> is given (a checkpoint's own configuration, e.g.
    /// with a padded vocabulary) the directory must describe the same architecture and the model takes that configuration.
    /// With <paramref name="tensorParallelism"/> the model is this rank's part of a tensor-parallel one, and each split
    /// parameter keeps its slice of the weights. With <paramref name="quantization"/> <see cref="WeightQuantization.Int8"/> (or
    /// <see cref="WeightQuantization.Fp8"/>) the
    /// model is for inference only: its linear layers' weights are quantized as they load (<see cref="QuantizedParameterStorage"/>),
    /// and no copy of them in <paramref name="dtype"/> is ever allocated on <paramref name="backend"/>; a tensor-parallel rank
    /// quantizes its own slices (<see cref="Quantized"/>). With <paramref name="adapter"/> (a PEFT LoRA adapter directory) the
    /// adapter is checked against the model before any weight is read, then merged into each weight it targets as that weight is
    /// read, before the conversion to <paramref name="dtype"/>, the quantization and the slicing
    /// (<see cref="HuggingFaceModelDirectory.MergeAdapter"/>): the model equals one loaded from what <c>tessera export</c> writes.
    /// With <paramref name="loraModules"/> those PEFT adapters are served unmerged over the (so loaded) base, each under its name
    /// (<see cref="Transformer.ServedAdapters"/>, multi-LoRA): checked against the model before any weight is read, attached after,
    /// in the slots <paramref name="loraSlots"/> sizes (with runtime loading on, slots are built even without start-up adapters).
    /// </summary>
    public static Transformer Load(string directory, IBackend backend, DType dtype, TransformerConfig? expected = null,
        Tessera.Nn.Parallel.TensorParallelism? tensorParallelism = null, WeightQuantization quantization = WeightQuantization.None,
        string? adapter = null, IReadOnlyList<Adapters.LoraModule>? loraModules = null, Adapters.LoraSlotOptions? loraSlots = null)
    {
        using var hf = expected is null ? HuggingFaceModelDirectory.Open(directory) : HuggingFaceModelDirectory.Open(directory, expected);
        if (adapter is not null) hf.MergeAdapter(adapter);
        var served = loraModules is { Count: > 0 } || loraSlots is { RuntimeLoading: true }
            ? Adapters.ServedLoraAdapters.Open(loraModules ?? [], hf.Config, loraSlots) : null;
        Transformer model;
        if (quantization == WeightQuantization.None)
        {
            model = new Transformer(hf.Config, backend, dtype, tensorParallelism: tensorParallelism, servedAdapters: served?.Batch);
            hf.LoadInto(model.Parameters.Parameters, backend);
        }
        else
        {
            // A 4-bit checkpoint's int4 model takes its group size and quantizes exactly the weights it holds in 4 bits.
            bool int4Checkpoint = quantization == WeightQuantization.Int4 && hf.Int4GroupSize is not null;
            model = Quantized(hf.Config, backend, dtype, tensorParallelism, quantization: quantization, servedAdapters: served?.Batch,
                int4GroupSize: int4Checkpoint ? hf.Int4GroupSize!.Value : Int4Quantization.DefaultGroupSize,
                int4Picks: int4Checkpoint ? p => hf.IsInt4Exact(p.Name) : null);
            hf.LoadInto(model.Layout.Parameters, backend);
        }
        served?.AttachTo(model);
        return model;
    }

    /// <summary>
    /// Checks the PEFT LoRA adapter in <paramref name="adapter"/> against the model in <paramref name="directory"/> (of
    /// configuration <paramref name="expected"/> when given, as <see cref="Load"/> takes it) without reading any weight: what a
    /// command does before it loads anything, to refuse a bad adapter at once and say what it will merge.
    /// </summary>
    /// <exception cref="HuggingFaceFormatException">The model directory is malformed.</exception>
    /// <exception cref="DirectoryNotFoundException">The adapter directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">One of the adapter's two files is missing.</exception>
    /// <exception cref="InvalidDataException">The adapter does not fit the model or its config is malformed.</exception>
    public static Adapters.LoraWeightMerge CheckAdapter(string directory, string adapter, TransformerConfig? expected = null)
    {
        using var hf = expected is null ? HuggingFaceModelDirectory.Open(directory) : HuggingFaceModelDirectory.Open(directory, expected);
        return hf.MergeAdapter(adapter);
    }

    /// <summary>
    /// What the load log should say about the form of <paramref name="directory"/>'s weights, or null when there is nothing
    /// to say: for a pre-quantized FP8 checkpoint, how many F8_E4M3 weights with which scales, and that its input_scale
    /// tensors are ignored; for a 4-bit GPTQ or AWQ checkpoint, how many 4-bit weights in which groups (reads the safetensors
    /// headers, config.json and GPTQ's g_idx tensors only).
    /// </summary>
    public static string? WeightsNote(string directory)
    {
        using var source = SafetensorsShardSource.Open(directory);
        string config = Path.Combine(directory, HuggingFaceModelDirectory.ConfigFile);
        var fp8 = new Fp8CheckpointSource(source, config);
        return fp8.Summary ?? new Int4CheckpointSource(fp8, source, config).Summary;
    }

    /// <summary>
    /// A model of <paramref name="config"/> for inference whose linear layers' weights are int8 (or, with
    /// <paramref name="quantization"/> <see cref="WeightQuantization.Fp8"/>, FP8 E4M3) with row scales
    /// (<see cref="QuantizedParameterStorage"/>; the other parameters in <paramref name="dtype"/>), all zero until written
    /// through <see cref="Parameter.WriteMasterOrValue"/> (a loader, benchmark weights), which quantizes them. With
    /// <paramref name="tensorParallelism"/> it is this rank's part: each rank quantizes the slice it holds, so a column-parallel
    /// weight's rows keep one device's scales and a row-parallel weight's rows get one scale per rank's slice of them. With
    /// <paramref name="lora"/> the int8 weights are the frozen base under trainable LoRA adapters (QLoRA's idea with int8):
    /// the base's gradients flow through dequantized copies, one layer at a time, and only the adapters are trained. With
    /// <paramref name="servedAdapters"/> the layers they target serve LoRA adapters unmerged over the quantized base (multi-LoRA).
    /// <para>With <see cref="WeightQuantization.Int4"/> the linear layers' weights (<see cref="Transformer.IsInt4Quantizable"/>,
    /// or those <paramref name="int4Picks"/> picks) are group-wise int4 in groups of <paramref name="int4GroupSize"/> columns
    /// (-1: per channel); the embedding tables and the LM head stay in <paramref name="dtype"/>. With tensor parallelism each
    /// rank quantizes the slice it holds, as int8 does (a row-parallel weight's groups start at its own first column). With
    /// <paramref name="lora"/> the int4 weights are the frozen base under trainable adapters, as int8's (QLoRA's arrangement:
    /// dx through a dequantized copy of one layer at a time).</para>
    /// </summary>
    public static Transformer Quantized(TransformerConfig config, IBackend backend, DType dtype,
        Tessera.Nn.Parallel.TensorParallelism? tensorParallelism = null, Tessera.Nn.Adapters.LoraOptions? lora = null,
        WeightQuantization quantization = WeightQuantization.Int8, Tessera.Nn.Adapters.MultiLoraBatch? servedAdapters = null,
        int int4GroupSize = Int4Quantization.DefaultGroupSize, Func<Parameter, bool>? int4Picks = null)
    {
        if (quantization == WeightQuantization.None)
            throw new ArgumentException("PretrainedModel.Quantized: quantization must be Int8, Fp8 or Int4; build a plain Transformer for None", nameof(quantization));
        var model = new Transformer(config, backend, dtype, ArenaStorage.Deferred, tensorParallelism, lora: lora, servedAdapters: servedAdapters);
        Func<Parameter, bool> picks = quantization == WeightQuantization.Int4 ? int4Picks ?? model.IsInt4Quantizable : model.IsQuantizable;
        _ = new QuantizedParameterStorage(model.Layout, backend, dtype, picks, quantization, int4GroupSize);   // attaches itself
        return model;
    }
}
