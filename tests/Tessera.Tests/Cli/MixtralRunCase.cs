using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Data;

namespace Tessera.Tests.Cli;

/// <summary>
/// The inputs of the command-line runs of a mixture-of-experts model (<see cref="ExpertParallelTrainTests"/>,
/// <see cref="MixtureOfExpertsTensorParallelTrainTests"/>): mixtral-debug with the byte vocabulary and random weights (seed 17)
/// as a Hugging Face directory with a tokenizer.json, a learnable shard of 4,000 tokens, and the arguments every run shares.
/// </summary>
internal sealed record MixtralRunCase(string Model, string Data)
{
    /// <summary>Writes the model to DIR/base and the shard to DIR/data.</summary>
    public static MixtralRunCase Write(string dir)
    {
        var config = ModelPresets.Get("mixtral-debug") with { VocabSize = 256 };
        var model = new Transformer(config, new CpuBackend(1), DType.F32);
        model.InitializeWeights(17);
        var modelDir = Path.Combine(dir, "base");
        HuggingFaceExport.Write(modelDir, model, new HuggingFaceExportOptions { Tokenizer = new ByteTokenizer() });
        var data = Path.Combine(dir, "data", "train_000.bin");
        TokenShard.Write(data, Enumerable.Range(0, 4000).Select(i => (i * 37 + i / 7) % 256).ToArray());
        return new MixtralRunCase(modelDir, data);
    }

    /// <summary>The arguments of a fine-tuning run into <paramref name="run"/> that every run of the case shares (no steps or batch).</summary>
    public string[] Common(string run) => ["--model", Model, "--data", Data, "--out", run, "--seq", "16", "--threads", "2", "--log-every", "1",
        "--sample-tokens", "0", "--eval-every", "0", "--warmup", "1"];
}
