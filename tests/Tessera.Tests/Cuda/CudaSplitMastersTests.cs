using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The CUDA split-master ops (<see cref="IBackend.SplitMasters"/>, <see cref="IBackend.JoinMasters"/>,
/// <see cref="IBackend.AdamWSplit"/>) against the CPU backend on the same inputs: bitwise (tolerance 0), as the separate-master
/// AdamW already agrees (the kernel repeats the CPU's operations one for one, and the split is integer arithmetic). Lengths
/// that take the four-element kernel (n a multiple of 4, aligned) and the scalar one (odd n, and a view one element in).
/// </summary>
[Collection("cuda")]
public sealed class CudaSplitMastersTests(CudaFixture fixture)
{
    private readonly CpuBackend _cpu = new(2);

    [Theory]
    [InlineData(4099, 0)]
    [InlineData(65536, 0)]
    [InlineData(4096, 1)]
    public void SplitAndJoinEqualTheCpuBackendBitForBit(int n, int offset)
    {
        var gpu = fixture.Backend;
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        var bits = new float[n];
        for (int i = 0; i < n; i++)
        {
            uint u = (uint)rng.NextInt64(0, 1L << 32);
            if (i % 4 == 0) u = (u & 0xFFFF_0000u) | 0x8000u;                  // ties
            bits[i] = BitConverter.UInt32BitsToSingle(u);
        }
        var masters = Place(gpu, bits, offset);
        var values = gpu.Allocate(new Shape(n + offset), DType.BF16).Narrow(offset, new Shape(n));
        var low = gpu.Allocate(new Shape(n + offset), DType.U16).Narrow(offset, new Shape(n));
        var joined = gpu.Allocate(new Shape(n + offset), DType.F32).Narrow(offset, new Shape(n));
        gpu.SplitMasters(masters, values, low);
        gpu.JoinMasters(values, low, joined);

        var cpuValues = _cpu.Allocate(new Shape(n), DType.BF16);
        var cpuLow = _cpu.Allocate(new Shape(n), DType.U16);
        _cpu.SplitMasters(_cpu.FromHost<float>(bits, new Shape(n)), cpuValues, cpuLow);

        Assert.Equal(_cpu.ToArray<BFloat16>(cpuValues), gpu.ToArray<BFloat16>(values));
        Assert.Equal(_cpu.ToArray<ushort>(cpuLow), gpu.ToArray<ushort>(low));
        Assert.Equal(Array.ConvertAll(bits, BitConverter.SingleToUInt32Bits), Array.ConvertAll(gpu.ToArray<float>(joined), BitConverter.SingleToUInt32Bits));
    }

    [Theory]
    [InlineData(4096, 0, DType.BF16, true, true)]     // four elements a thread
    [InlineData(4096, 0, DType.BF16, false, false)]
    [InlineData(4099, 0, DType.BF16, true, true)]     // scalar kernel: n not a multiple of 4
    [InlineData(4096, 1, DType.BF16, true, false)]    // scalar kernel: misaligned views
    [InlineData(4096, 0, DType.F32, true, true)]
    [InlineData(1001, 0, DType.F32, false, true)]
    public void SplitAdamWEqualsTheCpuBackendBitForBitOverSixSteps(int n, int offset, DType gradientType, bool decay, bool clip)
    {
        var gpu = fixture.Backend;
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        var initial = new float[n];
        for (int i = 0; i < n; i++) initial[i] = (float)(rng.NextDouble() * 2 - 1) * 0.05f;

        var values = gpu.Allocate(new Shape(n + offset), DType.BF16).Narrow(offset, new Shape(n));
        var low = gpu.Allocate(new Shape(n + offset), DType.U16).Narrow(offset, new Shape(n));
        var m = Zeros(gpu, n, offset);
        var v = Zeros(gpu, n, offset);
        gpu.SplitMasters(Place(gpu, initial, offset), values, low);
        var cpuValues = _cpu.Allocate(new Shape(n), DType.BF16);
        var cpuLow = _cpu.Allocate(new Shape(n), DType.U16);
        var cpuM = _cpu.Zeros(new Shape(n), DType.F32);
        var cpuV = _cpu.Zeros(new Shape(n), DType.F32);
        _cpu.SplitMasters(_cpu.FromHost<float>(initial, new Shape(n)), cpuValues, cpuLow);

        for (long t = 1; t <= 6; t++)
        {
            var g = new float[n];
            for (int i = 0; i < n; i++) g[i] = BFloat16.FromSingle((float)(rng.NextDouble() * 2 - 1) * 0.3f).ToSingle();
            double sumOfSquares = g.Sum(x => (double)x * x);
            var step = new AdamWStep(3e-3, 0.9, 0.95, 1e-8, decay ? 0.1 : 0.0, t, clip ? 0.5 : 0.0);
            Tensor gpuGrads, cpuGrads;
            if (gradientType == DType.BF16)
            {
                var h = Array.ConvertAll(g, BFloat16.FromSingle);
                gpuGrads = gpu.Allocate(new Shape(n + offset), DType.BF16).Narrow(offset, new Shape(n));
                gpu.CopyFromHost<BFloat16>(h, gpuGrads);
                cpuGrads = _cpu.FromHost<BFloat16>(h, new Shape(n));
            }
            else { gpuGrads = Place(gpu, g, offset); cpuGrads = _cpu.FromHost<float>(g, new Shape(n)); }
            var gpuSum = clip ? gpu.FromHost<float>([(float)sumOfSquares], new Shape(1)) : null;
            var cpuSum = clip ? _cpu.FromHost<float>([(float)sumOfSquares], new Shape(1)) : null;

            gpu.AdamWSplit(values, low, gpuGrads, m, v, step, gpuSum);
            _cpu.AdamWSplit(cpuValues, cpuLow, cpuGrads, cpuM, cpuV, step, cpuSum);

            string where = $"n = {n}, offset {offset}, {gradientType} gradients, decay {decay}, clip {clip}, step {t}";
            Assert.True(_cpu.ToArray<BFloat16>(cpuValues).SequenceEqual(gpu.ToArray<BFloat16>(values)), $"{where}: values differ");
            Assert.True(_cpu.ToArray<ushort>(cpuLow).SequenceEqual(gpu.ToArray<ushort>(low)), $"{where}: low words differ");
            Assert.True(Bits(_cpu.ToArray<float>(cpuM)).SequenceEqual(Bits(gpu.ToArray<float>(m))), $"{where}: m differs");
            Assert.True(Bits(_cpu.ToArray<float>(cpuV)).SequenceEqual(Bits(gpu.ToArray<float>(v))), $"{where}: v differs");
        }
    }

    private static uint[] Bits(float[] f) => Array.ConvertAll(f, BitConverter.SingleToUInt32Bits);

    /// <summary>An F32 device view of <paramref name="data"/> starting <paramref name="offset"/> elements into its buffer.</summary>
    private static Tensor Place(IBackend gpu, float[] data, int offset)
    {
        var t = gpu.Allocate(new Shape(data.Length + offset), DType.F32).Narrow(offset, new Shape(data.Length));
        gpu.CopyFromHost<float>(data, t);
        return t;
    }

    private static Tensor Zeros(IBackend gpu, int n, int offset)
    {
        var t = gpu.Allocate(new Shape(n + offset), DType.F32);
        gpu.Fill(t, 0);
        return t.Narrow(offset, new Shape(n));
    }
}
