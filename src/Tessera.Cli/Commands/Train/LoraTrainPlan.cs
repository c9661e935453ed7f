using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;

namespace Tessera.Cli.Commands.Train;

/// <summary>A checked LoRA run: everything <see cref="LoraTrainSession"/> needs, decided before the run directory is touched.</summary>
/// <param name="Settings">The command's settings.</param>
/// <param name="Options">Trainer options (BatchSize is a rank's micro-batch).</param>
/// <param name="DType">The model's element type.</param>
/// <param name="Lora">The adapters' options.</param>
/// <param name="ModelDir">The base model's Hugging Face directory (full path).</param>
/// <param name="Examples">The rendered, tokenized conversations.</param>
/// <param name="ResumeFrom">The checkpoint a --resume continues, or null.</param>
/// <param name="Topology">One device, CPU thread ranks or launched GPU ranks.</param>
/// <param name="StartStep">The step the run starts from (the checkpoint's on a resume, else 0).</param>
public sealed record LoraTrainPlan(TrainSettings Settings, TrainerOptions Options, DType DType, LoraOptions Lora, string ModelDir,
    IReadOnlyList<ChatExample> Examples, string? ResumeFrom, Topology Topology, int StartStep);
