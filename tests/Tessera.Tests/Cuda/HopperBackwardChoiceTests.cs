using Tessera.Cuda;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Which Hopper attention backward the default options run at a shape (<see cref="CudaBackend.MeasuredBestHopperBackward"/>,
/// no GPU needed): each row is a shape measured on the H200 (session 15, <c>gpu-attention --fused-qkv</c>, median of 10) or,
/// for the windowed order (variant 9), on an H100 (session 41, median of 20), and the expected variant is the fastest order
/// measured there (times in the comments, ms).
/// </summary>
public sealed class HopperBackwardChoiceTests
{
    [Theory]
    [InlineData(64, 12, 12, 1024, 6)]    // gpt2-124m 64 x 1024: 1.083 against 1.819 largest-first
    [InlineData(64, 32, 8, 1024, 9)]     // groups of 4 at 16 x 1024 (H100): 0.747 against 0.787 launch order, 1.072 largest-first
    [InlineData(64, 32, 8, 512, 6)]      // short sequences (unmeasured): the launch order
    [InlineData(64, 12, 12, 4096, 6)]    // 16 x 4096, one head a group: 3.057 against 5.241
    [InlineData(64, 32, 32, 2048, 6)]    // 8 x 2048, one head a group: 1.170 against 1.903 (H100: windowed 1.198, a tie with 1.204)
    [InlineData(64, 32, 8, 2048, 9)]     // llama-1b 8 x 2048 (H100): 1.220 against 1.633 largest-first, 1.255 launch order
    [InlineData(64, 32, 8, 4096, 9)]     // 4 x 4096 (H100): 2.159 against 2.505 and 2.263
    [InlineData(64, 32, 8, 8192, 9)]     // 2 x 8192 (H100): 4.039 against 4.272 and 4.153
    [InlineData(128, 32, 8, 2048, 9)]    // llama-8b heads 8 x 2048 (H100): 2.351 against 2.579 in launch order
    [InlineData(128, 32, 32, 1024, 6)]   // 16 x 1024, head size 128, one head a group: 1.440 against 2.369
    public void TheDefaultTakesTheFasterOrderOfTheMeasuredShape(int headSize, int queryHeads, int kvHeads, int t, int expected) =>
        Assert.Equal(expected, CudaBackend.MeasuredBestHopperBackward(headSize, queryHeads, kvHeads, t));

    /// <summary>
    /// Variants 9 and 10 order the CTAs largest work first within windows of (kv head, batch) pairs whose key blocks (T / 64)
    /// fill 3 CTAs an SM at head size 64 and 1 at 128 (half the resident CTAs there, the window measured; an H100 or H200 has
    /// 132 SMs), never fewer than one pair.
    /// </summary>
    [Theory]
    [InlineData(132, 64, 2048, 12)]      // llama-1b 8 x 2048: 396 resident CTAs over 32 key blocks
    [InlineData(132, 64, 8192, 3)]       // 2 x 8192: 128 key blocks
    [InlineData(132, 64, 2000, 12)]      // a partial last key block counts as one
    [InlineData(132, 128, 2048, 4)]      // head size 128: one CTA an SM counted (two are resident; the measured window)
    [InlineData(132, 64, 65536, 1)]      // more key blocks than resident CTAs: one pair a window
    public void TheBackwardWindowFillsTheResidentCtas(int multiprocessors, int headSize, int t, int expected) =>
        Assert.Equal(expected, CudaBackend.HopperBackwardWindow(multiprocessors, headSize, t));
}
