using Tessera.Cuda;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// How many threads the fused cross-entropy gives a row when the options leave it open
/// (<see cref="CudaBackend.CrossEntropyThreads"/>, no GPU needed), pinned to the H200 measurements it was chosen on (session 16,
/// <c>CudaLlamaRowOpsSpeedReport</c>, us a call at 128 / 256 / 512 / 1,024 threads: GPT-2's 5,048 x 50,257 chunk 426 / 408 /
/// 358 / 590, llama-1b's 2,048 x 128,256 chunk 481 / 441 / 429 / 462).
/// </summary>
public sealed class CrossEntropyThreadsChoiceTests
{
    [Theory]
    [InlineData(50_257, 512u)]     // gpt2-124m's real logits (rows padded to 50,304)
    [InlineData(128_256, 512u)]    // llama-3's vocabulary
    [InlineData(32_000, 512u)]     // llama-2's and mistral's (not measured: between the two)
    [InlineData(4_096, 512u)]
    [InlineData(4_095, 256u)]      // narrower rows (not measured: the tests' small models)
    [InlineData(256, 256u)]
    [InlineData(255, 128u)]        // tiny vocabularies (the tests' debug models)
    [InlineData(65, 128u)]
    public void WideRowsGetFiveHundredTwelveThreads(long columns, uint expected) =>
        Assert.Equal(expected, CudaBackend.CrossEntropyThreads(columns));
}

/// <summary>
/// The cluster cross-entropy's shape (<see cref="CudaBackend.ClusterCrossEntropyShape"/>, no GPU needed): CTAs of whole warps
/// whose threads hold 4 or 8 16-byte vectors each of a CTA's share of the row; none for rows under a warp's worth of vectors a
/// CTA or past 4,096 vectors a CTA (1,024 or 512 threads).
/// </summary>
public sealed class ClusterCrossEntropyShapeTests
{
    [Theory]
    [InlineData(50_257, 2, 8, 4, 224)]       // gpt2-124m in BF16: 6,282 vectors, 786 a CTA, 197 threads rounded to warps
    [InlineData(50_257, 2, 8, 8, 128)]       // 99 threads
    [InlineData(128_256, 2, 8, 4, 512)]      // llama-3 in BF16: 16,032 vectors, 2,004 a CTA
    [InlineData(128_256, 2, 8, 8, 256)]
    [InlineData(32_000, 4, 4, 4, 512)]       // F32: 8,000 vectors, 2,000 a CTA
    [InlineData(262_144, 2, 8, 4, 1024)]     // the widest row: 4,096 vectors a CTA
    [InlineData(262_144, 2, 8, 8, 512)]
    public void WholeWarpsThatCoverTheShare(int columns, int elementBytes, int ctas, int vectors, int threads) =>
        Assert.Equal((ctas, vectors, threads), CudaBackend.ClusterCrossEntropyShape(columns, elementBytes, ctas, vectors));

    [Theory]
    [InlineData(50_257, 2, 0)]               // clusters off
    [InlineData(1_000, 2, 8)]                // 125 vectors: 16 a CTA, under a warp
    [InlineData(128_256, 2, 2)]              // 8,016 vectors a CTA: past 4,096
    [InlineData(262_160, 2, 8)]              // 4,097 a CTA
    public void NoClusterForSmallOrHugeRowsOrWhenOff(int columns, int elementBytes, int ctas)
    {
        Assert.Null(CudaBackend.ClusterCrossEntropyShape(columns, elementBytes, ctas, 4));
        Assert.Null(CudaBackend.ClusterCrossEntropyShape(columns, elementBytes, ctas, 8));
    }
}
