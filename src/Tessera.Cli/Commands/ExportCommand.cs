using System.CommandLine;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Tensors.Cpu;

namespace Tessera.Cli.Commands;

/// <summary>
/// tessera export: a Hugging Face model directory with a PEFT LoRA adapter merged into its weights (W += alpha / r · B A), as a
/// complete Hugging Face directory (config, generation config, tokenizer files, safetensors in F32) that transformers loads.
/// </summary>
public sealed class ExportCommand : Command
{
    private readonly Option<string> _model = new("--model") { Description = "the base model: a Hugging Face directory", HelpName = "DIR", Required = true };
    private readonly Option<string> _adapter = new("--adapter") { Description = "a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), e.g. a LoRA run's OUT/adapter", HelpName = "DIR", Required = true };
    private readonly Option<string> _out = new("--out") { Description = "the merged model's directory (must not exist or be empty)", HelpName = "DIR", Required = true };

    /// <summary>Declares the options.</summary>
    public ExportCommand(Terminal terminal) : base("export", "merge a LoRA adapter into its base model and write a Hugging Face directory")
    {
        Options.Add(_model);
        Options.Add(_adapter);
        Options.Add(_out);
        SetAction(parse =>
        {
            string model = parse.GetValue(_model)!, adapter = parse.GetValue(_adapter)!, output = parse.GetValue(_out)!;
            if (!Directory.Exists(model)) throw new UsageException($"--model {model}: not a directory");
            if (!Directory.Exists(adapter)) throw new UsageException($"--adapter {adapter}: not a directory");
            if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
                throw new UsageException($"--out {output}: exists and is not empty; choose another directory");
            using var hf = HuggingFaceModelDirectory.Open(model);
            var lora = PeftAdapter.ReadOptions(adapter, hf.Config);
            var backend = new CpuBackend(Environment.ProcessorCount);
            // F32 on the CPU: the merge is done once, in the precision the export writes.
            var merged = new Transformer(hf.Config, backend, Tensors.DType.F32, ArenaStorage.Frozen, lora: lora);
            hf.LoadInto(merged.Parameters.Parameters, backend);
            PeftAdapter.Load(adapter, merged.Adapters!);
            merged.Adapters!.Merge();
            HuggingFaceExport.Write(output, merged, new HuggingFaceExportOptions { TokenizerDirectory = model });
            terminal.Line($"merged {adapter} (r = {lora.Rank}, alpha = {lora.Alpha}, {merged.Adapters.Layers.Count} layers) into {model}: {output}");
            return ExitCodes.Success;
        });
    }
}
