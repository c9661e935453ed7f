using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// <see cref="IBackend.AdamWRanges"/> on the CUDA backend (one launch of <c>adamw_items</c> over a table of work items)
/// against the CPU backend over four steps on the same inputs (gradients representable in BF16, one gradient sum of squares): parameters, moments and the low-precision copy bit for bit
/// (tolerance 0: the kernel repeats the CPU's operations one for one, as <see cref="IBackend.AdamW"/> does). Ranges alternate
/// decay, leave gaps (which must keep their values) and one spans several work items; with BF16 gradients and a BF16 copy,
/// and F32 gradients without one; with clipping and without; and ranges whose offsets are not multiples of 4 (the range-by-range
/// fallback).
/// </summary>
[Collection("cuda")]
public sealed class CudaAdamWRangesTests(CudaFixture fixture)
{
    private readonly CpuBackend _cpu = new(2);

    public static TheoryData<string, bool, bool> Cases => new()
    {
        { "BF16", true, true },
        { "BF16", true, false },
        { "F32", false, true },
        { "BF16", false, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void OneLaunchEqualsTheCpuBackendBitForBit(string gradientType, bool lowCopy, bool clip)
    {
        var gpu = fixture.Backend;
        foreach (bool aligned in new[] { true, false })
        {
            int seed = Environment.TickCount;
            TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}, {(aligned ? "aligned ranges" : "ranges at odd offsets")}");
            var rng = new Random(seed);
            int item = (int)CudaBackend.AdamWItemElements;
            int n = 3 * item + 5000;
            AdamWRange[] ranges = aligned
                ? [new(0, 768, true), new(768, 8, false), new(780, 2 * item + 36, true), new(2 * item + 816, 4000, false), new(2 * item + 4820, item, true)]
                : [new(1, 767, true), new(768, 9, false), new(781, 2 * item + 35, true), new(2 * item + 817, 3999, false)];
            var gradType = Enum.Parse<DType>(gradientType);
            var p0 = Enumerable.Range(0, n).Select(_ => (float)(0.05 * (rng.NextDouble() * 2 - 1))).ToArray();
            var backends = new IBackend[] { gpu, _cpu };
            var state = backends.Select(b => (P: b.FromHost<float>(p0, new Shape(n)), M: b.Zeros(new Shape(n), DType.F32), V: b.Zeros(new Shape(n), DType.F32),
                Low: lowCopy ? b.Zeros(new Shape(n), DType.BF16) : null, Sum: b.Zeros(new Shape(1), DType.F32))).ToArray();
            for (int t = 1; t <= 4; t++)
            {
                var g = Enumerable.Range(0, n).Select(_ => (float)BFloat16.FromSingle((float)(0.3 * (rng.NextDouble() * 2 - 1))).ToSingle()).ToArray();
                double sumOfSquares = g.Sum(x => (double)x * x);   // one value for both backends (their own sums may round apart)
                var step = new AdamWStep(3e-3, 0.9, 0.95, 1e-8, 0.1, t, clip ? 0.5 : 0);
                for (int k = 0; k < backends.Length; k++)
                {
                    var b = backends[k];
                    var grads = b.Allocate(new Shape(n), gradType);
                    b.Copy(b.FromHost<float>(g, new Shape(n)), grads);
                    b.Fill(state[k].Sum, sumOfSquares);
                    b.AdamWRanges(state[k].P, grads, state[k].M, state[k].V, ranges, step, clip ? state[k].Sum : null, state[k].Low);
                }
            }
            Assert.Equal(_cpu.ToArray<float>(state[1].P), gpu.ToArray<float>(state[0].P));
            Assert.Equal(_cpu.ToArray<float>(state[1].M), gpu.ToArray<float>(state[0].M));
            Assert.Equal(_cpu.ToArray<float>(state[1].V), gpu.ToArray<float>(state[0].V));
            if (lowCopy) Assert.Equal(_cpu.ToArray<BFloat16>(state[1].Low!), gpu.ToArray<BFloat16>(state[0].Low!));
            var p = gpu.ToArray<float>(state[0].P);
            Assert.Equal(p0[n - 1], p[n - 1]);                       // past the last range: untouched
            if (!aligned) Assert.Equal(p0[0], p[0]);                // before the first
        }
    }
}
