using System.CommandLine;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Optim;
using Tessera.Training.Pipeline;

namespace Tessera.Cli.Commands.Train;

/// <summary>tessera train: the options, read into <see cref="TrainSettings"/>; <see cref="TrainRun"/> does the rest.</summary>
public sealed class TrainCommand : Command
{
    private readonly Option<string?> _model = new("--model")
    {
        Description = "preset (gpt2-tiny, gpt2-124m, llama-debug, ...; 'tessera info' lists them) or a Hugging Face directory to fine-tune [default: gpt2-tiny]",
        HelpName = "PRESET|DIR",
    };
    private readonly Option<string?> _data = new("--data") { Description = "training shards (llm.c format), e.g. data/train_*.bin [default: the embedded corpus, written to OUT/data]", HelpName = "GLOB" };
    private readonly Option<string?> _valData = new("--val-data") { Description = "validation shards", HelpName = "GLOB" };
    private readonly Option<string?> _tokenizer = new("--tokenizer") { Description = "tokenizer of the shards (for the sample at the end) [default: byte]", HelpName = "byte|DIR" };
    private readonly Option<string> _out = new("--out") { Description = "run directory: data/, checkpoints/, metrics.jsonl, metrics.png", HelpName = "DIR", DefaultValueFactory = _ => "runs/default" };
    private readonly Option<int?> _steps = SharedOptions.AtLeast(new Option<int?>("--steps") { Description = "optimizer updates in the whole run (a total: a resumed run continues to it) [default: 1200]", HelpName = "N" }, 1);
    private readonly Option<int?> _batch = SharedOptions.AtLeast(new Option<int?>("--batch") { Description = "rows (sequences) per update, per rank [default: 16]", HelpName = "B" }, 1);
    private readonly Option<int?> _micro = SharedOptions.Micro();
    private readonly Option<int?> _seq = SharedOptions.Sequence("tokens per row [default: 128]");
    private readonly Option<double?> _lr = Positive("--lr", "X", "peak learning rate [default: 2e-3]");
    private readonly Option<int?> _warmup = SharedOptions.AtLeast(new Option<int?>("--warmup") { Description = "steps of linear learning-rate warmup [default: 50]", HelpName = "N" }, 0);
    private readonly Option<double?> _minLr = Fraction("--min-lr-fraction", "learning rate at the last step, as a fraction of the peak [default: 0.1]");
    private readonly Option<double> _weightDecay = SharedOptions.Double("--weight-decay", "X", "AdamW weight decay", 0.1, min: 0);
    private readonly Option<double> _clip = SharedOptions.Double("--clip", "X", "global gradient-norm clipping threshold", 1.0, min: 0, minExclusive: true);
    private readonly Option<int?> _seed = new("--seed") { Description = "seed of the weight initialization [default: 1337]", HelpName = "N" };
    private readonly Option<int?> _evalEvery = SharedOptions.AtLeast(new Option<int?>("--eval-every") { Description = "validation loss every N steps (0: never) [default: 200]", HelpName = "N" }, 0);
    private readonly Option<int?> _evalBatches = SharedOptions.AtLeast(new Option<int?>("--eval-batches") { Description = "validation batches per evaluation [default: 4]", HelpName = "N" }, 1);
    private readonly Option<int?> _checkpointEvery = SharedOptions.AtLeast(new Option<int?>("--checkpoint-every") { Description = "checkpoint every N steps (0: only at the end); a stop (Ctrl-C, SIGTERM) always saves one [default: 200]", HelpName = "N" }, 0);
    private readonly Option<int> _keepLast = SharedOptions.Int("--keep-last", "N", "checkpoints to keep; older ones are deleted after each save", 3, min: 1);
    private readonly Option<int?> _logEvery = SharedOptions.AtLeast(new Option<int?>("--log-every") { Description = "print a progress line and log metrics every N steps [default: 50]", HelpName = "N" }, 1);
    private readonly Option<Device> _device = SharedOptions.Device();
    private readonly Option<int> _threads = SharedOptions.Threads();
    private readonly Option<DType?> _dtype = NullableDType();
    private readonly Option<MasterWeights> _masters = new("--masters")
    {
        Description = "with --dtype bf16 (one GPU, or launched data-parallel ranks with --zero 0-3): how the F32 masters are kept; split: the BF16 values are the masters' " +
            "high halves and a 16-bit plane holds the rest (2 bytes per parameter less, the same master updates; a value differs from round-to-nearest-even only at exact ties; " +
            "not with --offload, --tp, --pp or --lora)",
        HelpName = "separate|split",
        DefaultValueFactory = _ => MasterWeights.Separate,
    };
    private readonly Option<bool> _recompute = SharedOptions.Flag("--recompute", "recompute activations in backward (less memory, about a third more compute)");
    private readonly Option<int> _ranks = SharedOptions.Int("--ranks", "N", "data-parallel CPU ranks (threads of this process; the cores are split between them)", 1, min: 1);
    private readonly Option<int> _tp = SharedOptions.Int("--tp", "N", "tensor-parallel ranks (Megatron: attention heads, MLP width and vocabulary split over N ranks); the ranks (--ranks, or the launched processes) form a dp x tp mesh; --tp alone runs N CPU thread ranks", 1, min: 1);
    private readonly Option<int> _ep = SharedOptions.Int("--ep", "N", "expert-parallel ranks (a mixture-of-experts model, with --ranks, ZeRO 0): each group of N data-parallel ranks splits every layer's experts, E / N a rank, and exchanges tokens by all-to-all; N must divide --ranks and the experts", 1, min: 1);
    private readonly Option<bool> _sp = SharedOptions.Flag("--sp", "with --tp: sequence parallelism (norms and residuals on 1/tp of the tokens; same result, less activation memory: see --print-memory)");
    private readonly Option<int> _zero = SharedOptions.Int("--zero", "0-3", "with --ranks or under 'tessera launch': ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters sharded)", 0, min: 0);
    private readonly Option<bool> _offload = SharedOptions.Flag("--offload", "with --zero: optimizer state and update on the host (ZeRO-Offload)");
    private readonly Option<int> _pp = SharedOptions.Int("--pp", "N", "pipeline stages (the blocks split over N ranks; a step's micro-batches, --batch / --micro, flow through them); the ranks form a dp x tp x pp mesh; --pp alone runs N CPU thread ranks", 1, min: 1);
    private readonly Option<PipelineScheduleKind> _schedule = Schedule();
    private readonly Option<int?> _virtualStages = SharedOptions.AtLeast(new Option<int?>("--virtual-stages") { Description = "with --schedule interleaved: model chunks per pipeline stage [default: 2]", HelpName = "V" }, 1);
    private readonly Option<bool> _printSchedule = SharedOptions.Flag("--print-schedule", "with --pp: print the pipeline schedule's timeline (forward 1, backward 2 time units per stage) and exit");
    private readonly Option<bool> _printMemory = SharedOptions.Flag("--print-memory", "print the activation bytes a rank keeps per micro-batch (buffer by buffer, under --tp, --sp, --recompute) and exit");
    private readonly Option<bool> _resume = SharedOptions.Flag("--resume", "continue the run in --out from its latest checkpoint; options left out take the checkpoint's values");
    private readonly Option<bool> _allowChanges = SharedOptions.Flag("--allow-changes", "with --resume: accept a changed batch, sequence length or learning-rate schedule (the run then no longer continues the saved one exactly)");
    private readonly Option<int> _sampleTokens = SharedOptions.Int("--sample-tokens", "N", "tokens to sample from the final model (0: none)", 200, min: 0);
    private readonly Option<int?> _lora = SharedOptions.AtLeast(new Option<int?>("--lora") { Description = "LoRA rank: fine-tune low-rank adapters of the frozen --model (a Hugging Face directory) on --data chat.jsonl ({\"messages\": [...]} per line, loss on assistant tokens); the adapter is saved in PEFT's layout to OUT/adapter; with --tp N (and --sp) the base and the adapters are split over tensor-parallel ranks and OUT/adapter is still the whole adapter", HelpName = "R" }, 1);
    private readonly Option<double?> _loraAlpha = Positive("--lora-alpha", "A", "with --lora: the adapters' output is scaled by A / R [default: R]");
    private readonly Option<double> _loraDropout = SharedOptions.Double("--lora-dropout", "P", "with --lora: dropout on the adapters' input in training", 0.0, min: 0);
    private readonly Option<string?> _loraTargets = new("--lora-targets") { Description = "with --lora: the projections adapted, from q, k, v, o, gate, up, down (or q_proj, ..., down_proj); Mixtral / Qwen-MoE: gate, up, down adapt every expert (w1, w3, w2 / gate_proj, up_proj, down_proj; Qwen2-MoE: and the shared expert), router the router; GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj (c_proj: both); Phi-3 (PEFT's fused modules): qkv, o, gate_up, down (or qkv_proj, o_proj, gate_up_proj, down_proj) [default: the attention projections, q,k,v,o, c_attn,attn.c_proj or qkv,o]", HelpName = "LIST" };
    private readonly Option<Tessera.Nn.Quantization.WeightQuantization> _quantize = SharedOptions.Quantize();
    private readonly Option<string?> _adapter = new("--adapter") { Description = "with --lora: start from this PEFT adapter directory (adapter_config.json + adapter_model.safetensors) instead of a fresh one", HelpName = "DIR" };

    /// <summary>Declares the options.</summary>
    public TrainCommand(Terminal terminal) : base("train", "train a model; with no options, the embedded default: gpt2-tiny on the .NET SDK's XML API documentation (byte tokens)")
    {
        Option[] options = [_model, _data, _valData, _tokenizer, _out, _steps, _batch, _micro, _seq, _lr, _warmup, _minLr, _weightDecay, _clip,
            _seed, _evalEvery, _evalBatches, _checkpointEvery, _keepLast, _logEvery, _device, _threads, _dtype, _masters, _recompute, _ranks, _tp, _ep, _sp, _zero,
            _offload, _pp, _schedule, _virtualStages, _printSchedule, _printMemory, _resume, _allowChanges, _sampleTokens, _lora, _loraAlpha, _loraDropout, _loraTargets, _adapter, _quantize];
        foreach (var o in options) Options.Add(o);
        _loraDropout.Validators.Add(r => { if (!r.Implicit && r.GetValueOrDefault<double>() >= 1) r.AddError($"--lora-dropout ({r.GetValueOrDefault<double>()}) must be below 1"); });
        _zero.Validators.Add(r => { if (!r.Implicit && r.GetValueOrDefault<int>() > 3) r.AddError($"--zero ({r.GetValueOrDefault<int>()}) must be 0, 1, 2 or 3"); });
        SetAction(parse =>
        {
            var settings = Read(parse);
            if (settings.LoraRank is null && (parse.GetResult(_loraAlpha) is { Implicit: false } || parse.GetResult(_loraTargets) is { Implicit: false }
                || parse.GetResult(_loraDropout) is { Implicit: false } || settings.Adapter is not null))
                throw new UsageException("--lora-alpha, --lora-dropout, --lora-targets and --adapter apply to LoRA fine-tuning; add --lora R");
            if (settings.Quantize != Tessera.Nn.Quantization.WeightQuantization.None && settings.LoraRank is null && !settings.Resume)
                throw new UsageException($"--quantize {settings.Quantize.ToString().ToLowerInvariant()} trains LoRA adapters over a quantized base (the base's weights are not trained); add --lora R");
            if (settings.LoraRank is not null && settings.Masters == MasterWeights.Split)
                throw new UsageException("--masters split: LoRA keeps the base frozen (no masters) and its adapters' masters separate; leave --masters out");
            // A LoRA run resumes as one: --resume of a directory whose checkpoint holds adapters needs no --lora.
            bool lora = settings.LoraRank is not null || settings.Resume && LoraTrainRun.HoldsLoraRun(settings.Out);
            if (lora && settings.ExpertParallel > 1)
                throw new UsageException($"--ep {settings.ExpertParallel}: LoRA fine-tuning keeps the base frozen and whole on every rank; expert parallelism is for training the model itself");
            return lora ? new LoraTrainRun(settings, terminal).Execute() : new TrainRun(settings, terminal).Execute();
        });
    }

    private TrainSettings Read(ParseResult p) => new()
    {
        Model = p.GetValue(_model), Data = p.GetValue(_data), ValidationData = p.GetValue(_valData), Tokenizer = p.GetValue(_tokenizer),
        Out = p.GetValue(_out)!, Steps = p.GetValue(_steps), Batch = p.GetValue(_batch), Micro = p.GetValue(_micro), Sequence = p.GetValue(_seq),
        LearningRate = p.GetValue(_lr), Warmup = p.GetValue(_warmup), MinLearningRateFraction = p.GetValue(_minLr), Seed = p.GetValue(_seed),
        AdamW = new AdamWOptions { WeightDecay = p.GetValue(_weightDecay), MaxGradNorm = p.GetValue(_clip) },
        EvalEvery = p.GetValue(_evalEvery), EvalBatches = p.GetValue(_evalBatches), CheckpointEvery = p.GetValue(_checkpointEvery),
        KeepLast = p.GetValue(_keepLast), LogEvery = p.GetValue(_logEvery), Device = p.GetValue(_device), Threads = p.GetValue(_threads),
        DType = p.GetValue(_dtype), Masters = p.GetValue(_masters), Recompute = p.GetValue(_recompute), Ranks = p.GetValue(_ranks), TensorParallel = p.GetValue(_tp), ExpertParallel = p.GetValue(_ep), SequenceParallel = p.GetValue(_sp), Zero = p.GetValue(_zero),
        Offload = p.GetValue(_offload), Pp = p.GetValue(_pp), Schedule = p.GetValue(_schedule), VirtualStages = p.GetValue(_virtualStages),
        PrintSchedule = p.GetValue(_printSchedule), PrintMemory = p.GetValue(_printMemory), Resume = p.GetValue(_resume), AllowChanges = p.GetValue(_allowChanges), SampleTokens = p.GetValue(_sampleTokens),
        LoraRank = p.GetValue(_lora), LoraAlpha = p.GetValue(_loraAlpha), LoraDropout = p.GetValue(_loraDropout),
        LoraTargets = p.GetValue(_loraTargets)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), Adapter = p.GetValue(_adapter),
        Quantize = p.GetValue(_quantize),
    };

    /// <summary>The command-line option of each trainer setting, for messages about a resume.</summary>
    public static string OptionOf(string setting) => setting switch
    {
        "GlobalBatch" => "--batch (rows per update over all ranks)",
        "SequenceLength" => "--seq",
        "LearningRate" => "--lr",
        "WarmupSteps" => "--warmup",
        "MinLearningRateFraction" => "--min-lr-fraction",
        "Steps" => "--steps",
        _ => setting,
    };

    private static Option<double?> Positive(string name, string helpName, string description)
    {
        var option = new Option<double?>(name) { Description = description, HelpName = helpName };
        option.Validators.Add(r =>
        {
            if (!r.Implicit && r.GetValueOrDefault<double?>() is double v && !(v > 0 && double.IsFinite(v)))
                r.AddError($"{name} ({v}) must be positive");
        });
        return option;
    }

    private static Option<double?> Fraction(string name, string description)
    {
        var option = new Option<double?>(name) { Description = description, HelpName = "X" };
        option.Validators.Add(r =>
        {
            if (!r.Implicit && r.GetValueOrDefault<double?>() is double v && v is not (>= 0 and <= 1))
                r.AddError($"{name} ({v}) must lie in [0, 1]");
        });
        return option;
    }

    private static Option<PipelineScheduleKind> Schedule()
    {
        var option = new Option<PipelineScheduleKind>("--schedule")
        {
            Description = "with --pp: gpipe (all forwards, then all backwards; re-materializes as --recompute), 1f1b (PipeDream-Flush: at most --pp micro-batches in flight) " +
                "or interleaved (Megatron's interleaved 1F1B: --virtual-stages chunks per stage, a v times smaller bubble)",
            HelpName = "gpipe|1f1b|interleaved",
            DefaultValueFactory = _ => PipelineScheduleKind.OneForwardOneBackward,
            CustomParser = r =>
            {
                var text = r.Tokens.Single().Value;
                switch (text.ToLowerInvariant())
                {
                    case "gpipe": return PipelineScheduleKind.GPipe;
                    case "1f1b": return PipelineScheduleKind.OneForwardOneBackward;
                    case "interleaved": return PipelineScheduleKind.Interleaved;
                    default:
                        r.AddError($"--schedule '{text}': expected gpipe, 1f1b or interleaved");
                        return PipelineScheduleKind.OneForwardOneBackward;
                }
            },
        };
        option.CompletionSources.Add("gpipe", "1f1b", "interleaved");
        return option;
    }

    private static Option<DType?> NullableDType()
    {
        var option = new Option<DType?>("--dtype")
        {
            Description = "model dtype: f32, bf16 (mixed precision, GPU) or f64 (numerical checks; not checkpointed) [default: f32]",
            HelpName = "f32|bf16|f64",
        };
        option.CustomParser = r =>
        {
            var text = r.Tokens.Single().Value;
            DType? d = text.ToLowerInvariant() switch { "f32" => Tensors.DType.F32, "bf16" => Tensors.DType.BF16, "f64" => Tensors.DType.F64, _ => null };
            if (d is null) r.AddError($"--dtype '{text}': expected f32, bf16 or f64");
            return d;
        };
        return option;
    }
}
