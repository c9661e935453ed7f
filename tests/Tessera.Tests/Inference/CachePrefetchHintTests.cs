using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Blocks;
using Tessera.Models.Tokenization;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference;

/// <summary>
/// Where the decoders ask the backend to bring weights into its cache (<see cref="IBackend.PrefetchToCache"/>): in a step of
/// at most <see cref="TransformerBlock.CachePrefetchMaxRows"/> rows, once a layer, right before its attention, naming the
/// output projection's weight and then the MLP's first weights (GPT-2: fc; Llama: gate, up); never in a step of more rows.
/// A recording backend over the CPU logs the paged engine's hints among its attention calls. (That the dense decoder
/// launches them, and that they change no result, is <c>CudaCachePrefetchTests</c>' part on the GPU.)
/// </summary>
public class CachePrefetchHintTests
{
    private const int Context = 32, Seed = 3;

    /// <summary>Logs each hint (the tensors named) and each attention call, in the order they come.</summary>
    private sealed class HintLog(IBackend inner) : ForwardingBackend(inner)
    {
        public List<(string Op, Tensor[] Tensors, int Rows)> Calls { get; } = [];

        public override void PrefetchToCache(ReadOnlySpan<Tensor> tensors)
        {
            Calls.Add(("prefetch", tensors.ToArray(), 0));
            base.PrefetchToCache(tensors);
        }

        public override void AttentionForwardCached(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor output,
            double scale, int window = 0, double softCap = 0)
        {
            Calls.Add(("attention", [], q.Size(0) * q.Size(1)));
            base.AttentionForwardCached(q, keyCache, valueCache, startPositions, output, scale, window, softCap);
        }

        public override void PagedAttention(Tensor q, Tensor pool, PagedBatch batch, Tensor output, double scale, int window = 0,
            Tensor? poolScales = null, double softCap = 0)
        {
            Calls.Add(("attention", [], q.Size(0)));
            base.PagedAttention(q, pool, batch, output, scale, window, poolScales, softCap);
        }
    }

    private static Tensor[] Expected(TransformerBlock block) => block.Mlp switch
    {
        SwiGluMlp s => [block.Attention.Projection.Weight.Value, s.Gate.Weight.Value, s.Up.Weight.Value],
        GeluMlp g => [block.Attention.Projection.Weight.Value, g.Fc.Weight.Value],
        _ => throw new InvalidOperationException($"no expectation for {block.Mlp.GetType().Name}"),
    };

    /// <summary>
    /// Checks the log: every attention call of a step of few rows is preceded at once by a hint naming its layer's weights
    /// (layers in order, cycling), and no hint comes before an attention of more rows (of which there must be some when
    /// <paramref name="wideSteps"/>). Returns the hints seen.
    /// </summary>
    private static int Check(HintLog log, Transformer model, bool wideSteps)
    {
        int layer = 0, hints = 0, wide = 0;
        for (int i = 0; i < log.Calls.Count; i++)
        {
            var (op, tensors, rows) = log.Calls[i];
            if (op == "prefetch")
            {
                Assert.True(i + 1 < log.Calls.Count && log.Calls[i + 1].Op == "attention", $"call {i}: a hint not followed by an attention");
                continue;
            }
            bool hinted = i > 0 && log.Calls[i - 1].Op == "prefetch";
            if (rows > TransformerBlock.CachePrefetchMaxRows)
            {
                Assert.False(hinted, $"call {i}: a hint before the attention of a {rows}-row step");
                wide++;
            }
            else
            {
                Assert.True(hinted, $"call {i}: the attention of a {rows}-row step (layer {layer}) had no hint");
                var named = log.Calls[i - 1].Tensors;
                var expected = Expected(model.Blocks[layer]);
                Assert.Equal(expected.Length, named.Length);
                for (int j = 0; j < expected.Length; j++)
                    Assert.True(ReferenceEquals(expected[j].Storage, named[j].Storage) && expected[j].Offset == named[j].Offset
                        && expected[j].Shape == named[j].Shape, $"call {i}: hint {j} of layer {layer} is not that layer's weight {j}");
                hints++;
            }
            layer = (layer + 1) % model.Config.Layers;
        }
        Assert.True(!wideSteps || wide > 0, "no step of many rows ran (the prompt's)");
        return hints;
    }

    /// <summary>
    /// The dense decoder's hint (<see cref="CausalSelfAttention.ForwardCached"/> runs its ops on the tensors' own backend, so
    /// a recording backend does not see them; the GPU test counts its launches): the block names its output projection's
    /// weight and its MLP's first weights for a step of few rows, nothing for more; a mixture of experts names only the
    /// projection (which experts come next is known only from the routing).
    /// </summary>
    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    [InlineData("mixtral-debug")]
    public void EachBlockNamesTheWeightsReadAfterItsAttention(string preset)
    {
        var model = ByteModels.Random(new CpuBackend(1), preset, Seed, Context);
        foreach (var block in model.Blocks)
        {
            var named = block.WeightsAfterAttention(1);
            var expected = block.Mlp is SparseMoeFeedForward ? [block.Attention.Projection.Weight.Value] : Expected(block);
            Assert.Equal(expected.Length, named.Length);
            for (int j = 0; j < expected.Length; j++) Assert.Same(expected[j], named[j]);
            Assert.Equal(expected.Length, block.WeightsAfterAttention(TransformerBlock.CachePrefetchMaxRows).Length);
            Assert.Empty(block.WeightsAfterAttention(TransformerBlock.CachePrefetchMaxRows + 1));
        }
    }

    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    public async Task ThePagedEngineHintsEachLayersNextWeightsBeforeItsAttention(string preset)
    {
        TestContext.Current.SendDiagnosticMessage($"model seed {Seed}");
        var log = new HintLog(new CpuBackend(1));
        var model = ByteModels.Random(log, preset, Seed, Context);
        var options = new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 16 * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, 4) },
            Scheduler = new SchedulerOptions { MaxBatch = 2, TokenBudget = 16, MaxQueue = 4 },
        };
        int steps;
        using (var engine = new InferenceEngine(model, new ByteTokenizer(), options))
        {
            var tokens = new List<int>();
            await foreach (var e in engine.Submit(new CompletionRequest { Prompt = [5, 6, 7, 8, 9, 10, 11], MaxTokens = 5 }).ReadAllAsync())
                tokens.AddRange(e.Tokens);
            Assert.Equal(5, tokens.Count);
            steps = Check(log, model, wideSteps: true) / model.Config.Layers;
        }
        // The 7-token prompt's step gives the first token; the other four come from one-row steps.
        Assert.Equal(4, steps);
    }
}
