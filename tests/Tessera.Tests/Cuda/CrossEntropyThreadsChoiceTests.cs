using Tessera.Cuda;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// How many threads the fused cross-entropy gives a row when the options leave it open
/// (<see cref="CudaBackend.CrossEntropyThreads"/>, no GPU needed), pinned to the H200 measurement it was chosen on (session 16,
/// gpt2-124m 64 x 1024: the step took 110.4 ms at 256 threads a row against 114.3 at the row kernels' 1,024).
/// </summary>
public sealed class CrossEntropyThreadsChoiceTests
{
    [Theory]
    [InlineData(50_257, 256u)]     // gpt2-124m's real logits (rows padded to 50,304)
    [InlineData(128_256, 256u)]    // llama-3's vocabulary
    [InlineData(32_000, 256u)]     // llama-2's and mistral's
    [InlineData(256, 256u)]
    [InlineData(255, 128u)]        // tiny vocabularies (the tests' debug models)
    [InlineData(65, 128u)]
    public void WideRowsGetTwoHundredFiftySixThreads(long columns, uint expected) =>
        Assert.Equal(expected, CudaBackend.CrossEntropyThreads(columns));
}
