using Tessera.Cuda;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// How the host sizes serving's paged decode grid (<see cref="CudaBackend.PagedDecodeSplits"/>, no GPU needed): the key
/// splits fill at most one wave of resident CTAs, at least one split, at most one per split span of the widest row and 32.
/// The H200 figures (132 SMs, 4 resident CTAs of <c>paged_decode_bf16_d64_g4</c>, llama-1b's 8 head groups) are the ones
/// the option's measurement used.
/// </summary>
public sealed class PagedDecodeGridTests
{
    private const int Sms = 132, Resident = 4, Groups = 8, SplitSpan = 64;

    [Theory]
    [InlineData(64, 1024, 1)]    // 512 columns: one split is the only whole wave (measured 43.8 us a layer against 59.9 at 3)
    [InlineData(32, 1024, 2)]    // 256 columns: two splits, 512 CTAs
    [InlineData(8, 1024, 8)]     // 64 columns: eight splits, 512 CTAs
    [InlineData(1, 656, 11)]     // a batch of one: the 656-position table bounds it (11 splits of 64), as before
    [InlineData(128, 1024, 1)]   // past one wave already: never fewer than one split
    [InlineData(1, 100_000, 32)] // a long table: at most 32 splits
    public void SplitsFillOneWaveOfResidentCtas(int sequences, int span, int expected) =>
        Assert.Equal(expected, CudaBackend.PagedDecodeSplits(Resident, Sms, sequences * Groups, span, SplitSpan));

    [Fact]
    public void AGridWithMoreThanOneSplitNeverPassesOneWave()
    {
        for (int columns = 1; columns <= 2048; columns++)
        {
            int splits = CudaBackend.PagedDecodeSplits(Resident, Sms, columns, 4096, SplitSpan);
            Assert.InRange(splits, 1, 32);
            if (splits > 1) Assert.True((long)splits * columns <= Resident * Sms, $"{columns} columns x {splits} splits pass {Resident * Sms} resident CTAs");
            if (splits < 32) Assert.True((long)(splits + 1) * columns > Resident * Sms, $"{columns} columns: {splits + 1} splits would still fit one wave");
        }
    }
}
