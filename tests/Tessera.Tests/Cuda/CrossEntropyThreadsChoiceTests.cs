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
