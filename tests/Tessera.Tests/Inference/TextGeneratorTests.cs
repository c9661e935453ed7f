using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference;

/// <summary>Generation with the KV cache against the same choices made from full forward passes without a cache.</summary>
public class TextGeneratorTests
{
    private readonly CpuBackend _cpu = new(1);

    private Transformer RandomModel(string preset, int seed)
    {
        var model = new Transformer(ModelPresets.Get(preset), _cpu, DType.F64);
        // Weights of O(0.3) spread the logits so that no two candidates are near a tie.
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));
        return model;
    }

    /// <summary>The reference: each new token chosen from the last row of a full forward pass over everything so far.</summary>
    internal static List<int> Reference(Transformer model, IBackend backend, IReadOnlyList<int> prompt, int count, SamplingOptions sampling)
    {
        var sampler = new Sampler(sampling);
        var tokens = prompt.ToList();
        var produced = new List<int>();
        int v = model.Config.VocabSize;
        for (int i = 0; i < count; i++)
        {
            var logits = TestTensors.ToDoubles(backend, model.Forward(backend.FromArray(tokens.ToArray(), 1, tokens.Count)));
            model.ReleaseActivations(0);
            int vPad = model.Config.EffectivePaddedVocab;
            var last = new float[v];
            for (int j = 0; j < v; j++) last[j] = (float)logits[(tokens.Count - 1) * vPad + j];
            int next = sampler.Sample(last, v, tokens.Count);            // the token's position
            produced.Add(next);
            tokens.Add(next);
        }
        return produced;
    }

    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    [InlineData("mixtral-debug")]      // decode steps routed on the device, against full forwards routed on the host
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]
    public void GreedyDecodingMatchesArgmaxOfFullForwardPasses(string preset)
    {
        var model = RandomModel(preset, 5);
        int[] prompt = [3, 14, 15, 9, 2];
        var generated = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 12 }).ToList();
        Assert.Equal(Reference(model, _cpu, prompt, 12, SamplingOptions.Greedy), generated);
    }

    [Fact]
    public void SampledDecodingMatchesTheSamplerOnFullForwardLogits()
    {
        var model = RandomModel("llama-debug", 6);
        int[] prompt = [7, 1, 8];
        var sampling = new SamplingOptions { Temperature = 0.9, TopK = 20, TopP = 0.95, Seed = 11 };
        var generated = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 10, Sampling = sampling }).ToList();
        Assert.Equal(Reference(model, _cpu, prompt, 10, sampling), generated);
    }

    [Fact]
    public void GenerationStopsWhenTheContextIsFullAndOnStopTokens()
    {
        var model = RandomModel("gpt2-debug", 7);
        int context = model.Config.MaxSequenceLength;
        var prompt = Enumerable.Range(0, context - 3).Select(i => i % model.Config.VocabSize).ToArray();
        var all = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 100 }).ToList();
        Assert.Equal(3, all.Count);   // prompt + produced fill the context exactly
        var stopped = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 100, StopTokens = [all[1]] }).ToList();
        Assert.Equal(all.Take(all.IndexOf(all[1])), stopped);
    }
}
