using Tessera.Distributed.Mesh;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Inference;

/// <summary>
/// Generation with a tensor-parallel model on CPU thread ranks: each rank caches its own key/value heads, the products
/// reduce over the ranks, and the vocabulary's columns are gathered for sampling. In F64 the whole logits agree with one
/// device's to rounding, so the greedy and the seeded sampled tokens must be the same tokens, on every rank.
/// </summary>
public sealed class TensorParallelGenerationTests
{
    private static readonly int[] Prompt = [5, 17, 3, 42, 8];

    private static List<int> Generate(Transformer model, SamplingOptions sampling) =>
        new TextGenerator(model).Generate(Prompt, new GenerationOptions { MaxNewTokens = 20, Sampling = sampling }).ToList();

    [Theory]
    [InlineData("gpt2-debug", 2)]
    [InlineData("llama-debug", 2)]
    [InlineData("llama-debug", 4)]   // 2 key/value heads over 4 ranks: each rank caches a replica of its head
    [InlineData("llama-headsize-debug", 2)]   // head size 16 != C / H: each rank's output projection takes 2·16 of 64 inputs
    [InlineData("qwen3-debug", 2)]            // each rank normalizes its own heads with the replicated q/k norms
    [InlineData("gemma3-debug", 2)]           // post-norms replicated after the row-parallel reductions, GeGLU column-parallel
    [InlineData("phi3-debug", 2)]
    [InlineData("phi4-mini-debug", 2)]        // each rank rotates 6 of its heads' 8 channels
    [InlineData("gemma2-debug", 2)]           // each rank caps its vocabulary columns before the gather
    [InlineData("mixtral-debug", 2)]          // every rank routes alike and runs its half of every expert; one all-reduce a block
    [InlineData("mixtral-debug", 4)]
    [InlineData("qwen3-moe-debug", 2)]
    [InlineData("qwen2-moe-debug", 2)]        // the shared expert split too, its sigmoid gate replicated
    public void TensorParallelRanksGenerateOneDevicesTokens(string preset, int tp)
    {
        var config = ModelPresets.Get(preset);
        var greedy = new SamplingOptions { Temperature = 0 };
        var sampled = new SamplingOptions { Temperature = 0.9, TopK = 20, Seed = 7 };
        var one = new Transformer(config, new CpuBackend(1), DType.F64);
        one.InitializeWeights(seed: 3);
        var expectedGreedy = Generate(one, greedy);
        var expectedSampled = Generate(one, sampled);
        var ranks = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var model = new Transformer(config, ctx.Backend, DType.F64,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory));
            model.InitializeWeights(seed: 3);
            Assert.Equal(Math.Max(1, config.EffectiveKvHeads / tp), model.CreateKvCache(1).KvHeads);
            return (Greedy: Generate(model, greedy), Sampled: Generate(model, sampled));
        }, TimeSpan.FromSeconds(60));
        Assert.Equal(20, expectedGreedy.Count);
        foreach (var r in ranks)
        {
            Assert.Equal(expectedGreedy, r.Greedy);
            Assert.Equal(expectedSampled, r.Sampled);
        }
    }
}
