using Tessera.Cuda.Distributed;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tests.Inference.Serving;
using Xunit;

namespace Tessera.Tests.Cuda.Distributed;

/// <summary>
/// Tensor-parallel serving on two CUDA thread ranks sharing the one GPU (F32): rank 0's engine schedules, both ranks run
/// each step's paged kernels over their own key/value heads, the collectives run on the device through the in-process
/// transport, and no step is recorded (a tensor-parallel step waits on its collectives from the host). Concurrent greedy
/// requests give one device's tokens.
/// </summary>
[Collection("cuda")]
public sealed class CudaTensorParallelServingTests(CudaFixture fixture)
{
    private static EngineOptions Options => new()
    {
        Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
        Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 64 },
    };

    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    public async Task TwoCudaThreadRanksServeOneDevicesTokens(string preset)
    {
        var gpu = fixture.Backend;                                   // skips without a GPU
        var config = ModelPresets.Get(preset) with { MaxSequenceLength = 64 };
        var one = new Transformer(config, gpu, DType.F32);
        one.InitializeWeights(seed: 3);
        var prompts = Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 1 + 7 * i).Select(j => (i * 13 + j * 5) % config.VocabSize).ToArray()).ToArray();
        List<int>[] expected;
        using (var engine = new InferenceEngine(one, new ByteTokenizer(), Options)) expected = await EngineRequests.RunAll(engine, prompts, 20);

        var results = await Task.Run(() => CudaThreadRanks.Run(2, ctx => TensorParallelServingRank.Run(ctx.Rank, 2, ctx.Backend, ctx.Factory,
            config, DType.F32, Options, engine =>
            {
                var served = EngineRequests.RunAll(engine, prompts, 20).GetAwaiter().GetResult();
                Assert.Equal(0, engine.ReplayedSteps);
                return served;
            }), timeout: TimeSpan.FromMinutes(2)), TestContext.Current.CancellationToken);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[0]![i]);
    }
}
