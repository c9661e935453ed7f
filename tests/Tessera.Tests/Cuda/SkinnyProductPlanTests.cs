using Tessera.Cuda;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The skinny product's grid (<see cref="SkinnyProductPlan"/>, a pure function: no GPU): at the Llama-1B decode shapes on an
/// H200's 132 SMs and at odd shapes, the slices cover K in multiples of 128 columns of at most 512, no CTA has no row block,
/// the grid fills the SMs' target where the shape allows it, the staged slice of x fits an SM's shared memory (227 KB), and
/// rows outside 5 to 64 are refused.
/// </summary>
public sealed class SkinnyProductPlanTests
{
    [Theory]
    [InlineData(8, 3072, 2048)]
    [InlineData(32, 3072, 2048)]
    [InlineData(64, 3072, 2048)]
    [InlineData(64, 2048, 2048)]
    [InlineData(64, 16384, 2048)]
    [InlineData(64, 2048, 8192)]
    [InlineData(5, 200, 392)]
    [InlineData(37, 64, 8)]
    [InlineData(16, 100000, 128)]
    public void SlicesCoverKAndTheGridFillsTheSms(int m, int n, int k)
    {
        const int sms = 132, perSm = 2;
        var plan = SkinnyProductPlan.For(m, n, k, sms, perSm);
        TestContext.Current.TestOutputHelper?.WriteLine($"M={m} N={n} K={k}: {plan}, {plan.SharedBytes} B shared, {plan.PartialFloats} partial floats");
        Assert.Equal(SkinnyProductPlan.PadRows(m), plan.PaddedRows);
        Assert.True(plan.PaddedRows >= m && plan.PaddedRows % 8 == 0);
        Assert.Equal((n + 63) / 64, plan.RowBlocks);
        Assert.Equal(0, plan.SliceColumns % SkinnyProductPlan.SliceStep);
        Assert.InRange(plan.SliceColumns, SkinnyProductPlan.SliceStep, SkinnyProductPlan.MaxSliceColumns);
        Assert.True((long)plan.Slices * plan.SliceColumns >= k, "the slices cover K");
        Assert.True((long)(plan.Slices - 1) * plan.SliceColumns < k, "no slice is empty");
        Assert.InRange(plan.CtasPerSlice, 1, plan.RowBlocks);
        Assert.True((long)plan.CtasPerSlice * plan.Slices >= Math.Min(sms * perSm, (long)plan.RowBlocks * plan.Slices),
            "the grid reaches the target or every row block of every slice");
        Assert.True(plan.SharedBytes <= 227 * 1024);
        Assert.Equal(plan.Slices > 1 ? (long)plan.Slices * plan.PaddedRows * plan.RowBlocks * 64 : 0, plan.PartialFloats);
    }

    [Fact]
    public void TheDecodeShapesSplitKWhereTheRowsAloneCannotFillTheSms()
    {
        // 32 row blocks of the output product cannot fill 264 CTAs: K must be split; gate/up's 256 row blocks nearly can.
        Assert.True(SkinnyProductPlan.For(64, 2048, 2048, 132).Slices > 1);
        Assert.True(SkinnyProductPlan.For(64, 2048, 8192, 132).Slices > 1);
        Assert.Equal(1, SkinnyProductPlan.For(8, 64, 128, 132).Slices);   // K = 128: one slice, nothing to reduce
    }

    [Theory]
    [InlineData(4)]
    [InlineData(65)]
    public void RowsOutsideFiveToSixtyFourAreRefused(int m) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => SkinnyProductPlan.For(m, 2048, 2048, 132));
}
