using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Models;

/// <summary>
/// The activation-memory estimate against what the CPU backend allocates. Tolerance: none (to the byte). The estimate lists
/// the buffers this code keeps, so any difference is a buffer it does not know about (or one it invents); the backend's
/// allocation counter sees every storage, so it is an independent measurement of the store's bookkeeping.
/// </summary>
public sealed class ActivationMemoryTests
{
    private const int B = 2, T = 16;

    private static TransformerConfig Config(string preset) => preset == "gpt2-debug"
        ? ModelPresets.Get(preset) with { PaddedVocabSize = 128 }   // 32 padding columns: the head's padding scratch at tp 1
        : ModelPresets.Get(preset);

    [Theory]
    [InlineData("gpt2-debug", 1, false, false, DType.F32, 0)]
    [InlineData("gpt2-debug", 2, false, false, DType.F32, 0)]
    [InlineData("gpt2-debug", 2, true, false, DType.F64, 0)]
    [InlineData("gpt2-debug", 2, true, true, DType.F32, 12)]   // checkpointed blocks; the head in chunks of 12 rows at most
    [InlineData("llama-debug", 1, false, false, DType.F64, 0)]
    [InlineData("llama-debug", 2, false, false, DType.F32, 0)]
    [InlineData("llama-debug", 2, true, false, DType.F32, 0)]
    [InlineData("llama-debug", 4, true, true, DType.F32, 0)]   // 2 key/value heads replicated over 4 ranks
    [InlineData("qwen3-debug", 1, false, false, DType.F64, 0)] // the q/k head norms' buffers; heads of 16 over a width of 32
    [InlineData("qwen3-debug", 2, true, false, DType.F32, 0)]
    [InlineData("mixtral-debug", 1, false, false, DType.F64, 0)]   // router logits, each expert's gathered rows: N k in all
    [InlineData("qwen3-moe-debug", 1, false, false, DType.F32, 0)] // (not checkpointed: the shared buffers of an expert keep the
                                                                   // largest count of any block, above the estimate's N k)
    [InlineData("qwen2-moe-debug", 1, false, false, DType.F64, 0)] // and the shared expert's SwiGLU over all N rows, its gate's sigmoid
    [InlineData("mixtral-debug", 2, false, false, DType.F64, 0)]   // tp: every rank routes all N rows through F' / tp of each expert
    [InlineData("qwen2-moe-debug", 2, false, false, DType.F32, 0)]
    [InlineData("qwen2-moe-debug", 2, true, false, DType.F64, 0)]  // + SP: the gathered input, the partial sum in a shared buffer
    [InlineData("gemma2-debug", 1, false, false, DType.F64, 0)] // post-norms, residual adds, GeGLU; the soft-capped head unfused
    [InlineData("gemma2-debug", 2, true, false, DType.F32, 0)]  // the vocabulary-parallel loss of the unfused head
    [InlineData("gemma3-debug", 2, true, false, DType.F32, 0)]
    [InlineData("gemma3-debug", 1, false, true, DType.F32, 0)]
    public void TheEstimateIsWhatTheCpuBackendAllocatesForEachMicroBatchBetweenForwardAndBackward(
        string preset, int tp, bool sp, bool recompute, DType dtype, int chunkRows)
    {
        var config = Config(preset);
        var estimate = ActivationMemory.Estimate(config, B, T, dtype, tp, sp, recompute, chunkRows == 0 ? null : chunkRows);
        var measured = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            using var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = tp > 1 ? new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sp), ctx.Factory) : null;
            var model = new Tessera.Models.Transformer(config, ctx.Backend, dtype, tensorParallelism: tensor) { RecomputeActivations = recompute };
            if (chunkRows > 0) model.LossChunkRows = chunkRows;
            model.InitializeWeights(seed: 5);
            var cpu = (CpuBackend)ctx.Backend;
            var tokens = cpu.Allocate(new Shape(B, T), DType.I32);
            cpu.CopyFromHost<int>(Enumerable.Range(0, B * T).Select(i => (7 * i) % config.VocabSize).ToArray(), tokens);
            long before = cpu.AllocatedBytes;
            model.Loss(tokens, tokens, microBatch: 0);                // the first forward: micro-batch 0's buffers and the shared ones
            long first = cpu.AllocatedBytes - before;
            long slot = model.Activations.BufferedBytes(s => s >= 0);
            before = cpu.AllocatedBytes;
            model.Loss(tokens, tokens, microBatch: 1);                // a second micro-batch in flight: its own buffers only
            long second = cpu.AllocatedBytes - before;
            model.Backward(1);
            model.Backward(0);
            return (first, slot, second);
        }, TimeSpan.FromSeconds(60));
        Assert.All(measured, m =>
        {
            Assert.Equal(estimate.PerMicroBatchBytes + estimate.SharedBytes, m.first);
            Assert.Equal(estimate.PerMicroBatchBytes, m.slot);
            Assert.Equal(estimate.PerMicroBatchBytes, m.second);
        });
    }

    [Fact]
    public void TensorParallelismSplitsHeadsAndMlpAndSequenceParallelismSplitsAllButTheGatheredInputs()
    {
        // llama-1b's shapes at 4 x 2048 in BF16 (nothing is run): a block's bytes per token at tp 1, 4 and 4 with SP.
        var config = ModelPresets.Get("llama-1b");
        long perToken(int tp, bool sp) => ActivationMemory.Estimate(config, 4, 2048, DType.BF16, tp, sp).PerBlockBytes / (4 * 2048);
        int c = config.Embedding, h = config.Heads, k = config.EffectiveKvHeads, d = config.HeadSize, f = config.EffectiveHidden;
        // tp 1: norm1, att, proj, norm2, mlp.proj (5C) + qkv ((H + 2K) D) + SwiGLU (3F) elements of 2 bytes; 2 norm and H lse floats.
        Assert.Equal(2L * (5 * c + (h + 2 * k) * d + 3 * f) + 4 * (2 + h), perToken(1, false));
        // tp 4: the heads and the MLP split 4 ways; the norms' outputs and the row-parallel outputs stay whole.
        Assert.Equal(2L * (4 * c + (c + (h + 2 * k) * d + 3 * f) / 4) + 4 * (2 + h / 4), perToken(4, false));
        // + SP: the norms' outputs and the residual stream split; the two gathered inputs whole; the partial sums not kept.
        Assert.Equal(2L * (2 * c + (4 * c + c + (h + 2 * k) * d + 3 * f) / 4) + 2 + 4 * (h / 4), perToken(4, true));
        Assert.True(perToken(4, true) < perToken(4, false) && perToken(4, false) < perToken(1, false));
        Assert.Equal(2L * c + 6, perToken(4, false) - perToken(4, true));
    }

    [Fact]
    public void ALayoutThatDoesNotDivideTheModelIsRefusedNamingTheField()
    {
        var e = Assert.Throws<ArgumentException>(() => ActivationMemory.Estimate(ModelPresets.Get("llama-debug"), 2, 16, DType.F32, tensorParallel: 3));
        Assert.Contains("tp (3) must divide the attention heads (Heads = 4)", e.Message);
        var rows = Assert.Throws<ArgumentException>(() => ActivationMemory.Estimate(ModelPresets.Get("llama-debug"), 1, 3, DType.F32, 2, sequenceParallel: true));
        Assert.Contains("must divide the micro-batch's tokens (1 x 3)", rows.Message);
    }
}
