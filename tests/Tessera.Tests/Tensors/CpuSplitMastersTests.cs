using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// Split F32 masters on the CPU backend (<see cref="IBackend.SplitMasters"/>, <see cref="IBackend.JoinMasters"/>,
/// <see cref="IBackend.AdamWSplit"/>): the split is integer arithmetic on the master's bits, so every check is exact
/// (tolerance 0). The BF16 half is compared with round-to-nearest-even (<see cref="BFloat16.FromSingle"/>), from which it
/// may differ only at exact ties (low half 0x8000), where it rounds away from zero.
/// </summary>
public sealed class CpuSplitMastersTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>Bit patterns that stress the split: zeros, subnormals, ties, carries into the next exponent, the edges of F32.</summary>
    private static readonly uint[] Edges =
    [
        0x0000_0000, 0x8000_0000,                         // +0, -0
        0x0000_0001, 0x8000_0001, 0x0000_8000, 0x0000_FFFF, 0x807F_FFFF,   // subnormals, a subnormal tie, a carry into the normals
        0x3F80_8000, 0x3F81_8000, 0xBF80_8000, 0xBF81_8000, // ties with an even and an odd high half, both signs
        0x3F7F_FFFF, 0xBF7F_FFFF, 0x3FFF_FFFF,             // low half 0xFFFF: the high half carries into the next exponent
        0x3F80_7FFF, 0x3F80_8001, 0x3F80_0001,             // just below and above a tie
        0x7F7F_7FFF, 0x0080_0000, 0x7F80_0000, 0xFF80_0000, // near F32's largest finite value (rounds down), the smallest normal, infinities
    ];

    [Fact]
    public void SplitThenJoinGivesEveryMasterBackBitForBitAndTheHighHalfIsRoundToNearestEvenExceptAtTies()
    {
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        const int random = 200_000;
        var bits = new uint[random + Edges.Length];
        for (int i = 0; i < random; i++) bits[i] = (uint)rng.NextInt64(0, 1L << 32);
        // A quarter of them exact ties, so both tie cases occur many times.
        for (int i = 0; i < random / 4; i++) bits[i] = (bits[i] & 0xFFFF_0000u) | 0x8000u;
        Edges.CopyTo(bits, random);
        var masters = _cpu.FromHost<float>(Array.ConvertAll(bits, BitConverter.UInt32BitsToSingle), new Shape(bits.Length));
        var values = _cpu.Allocate(new Shape(bits.Length), DType.BF16);
        var low = _cpu.Allocate(new Shape(bits.Length), DType.U16);
        var joined = _cpu.Allocate(new Shape(bits.Length), DType.F32);

        _cpu.SplitMasters(masters, values, low);
        _cpu.JoinMasters(values, low, joined);

        var hi = High(values);
        var lo = _cpu.ToArray<ushort>(low);
        var back = Bits(joined);
        int ties = 0;
        for (int i = 0; i < bits.Length; i++)
        {
            uint u = bits[i];
            Assert.True(back[i] == u, $"element {i}: 0x{u:X8} split to 0x{hi[i]:X4}/0x{lo[i]:X4} joins to 0x{back[i]:X8}");
            Assert.Equal((uint)hi[i] << 16, u - (uint)(int)(short)lo[i]);       // hi << 16 = u - (int16)lo exactly
            float f = BitConverter.UInt32BitsToSingle(u);
            if (float.IsNaN(f) || (u & 0x7FFF_FFFFu) >= 0x7F7F_8000u) continue;   // NaNs and overflow to infinity: out of scope
            ushort rne = BFloat16.FromSingle(f).Bits;
            if ((u & 0xFFFFu) == 0x8000u)
            {
                ties++;
                Assert.True(hi[i] == (ushort)((u >> 16) + 1), $"element {i}: tie 0x{u:X8} must round away from zero, got 0x{hi[i]:X4}");
            }
            else Assert.True(hi[i] == rne, $"element {i}: 0x{u:X8} high half 0x{hi[i]:X4}, round to nearest even 0x{rne:X4}");
        }
        Assert.True(ties > random / 8, $"only {ties} ties were checked");
    }

    public static TheoryData<int, bool, bool, DType> AdamWCases() => new()
    {
        { 1, true, true, DType.BF16 }, { 7, false, true, DType.BF16 }, { 1001, true, false, DType.BF16 },
        { 1001, false, false, DType.BF16 }, { 70_001, true, true, DType.BF16 }, { 1001, true, true, DType.F32 },
    };

    /// <summary>
    /// <see cref="IBackend.AdamWSplit"/> against <see cref="IBackend.AdamW"/> on separate F32 masters (with its BF16
    /// <c>lowPrecisionCopy</c>) from the same masters and BF16 gradients, over six steps: the joined masters, m and v are
    /// bitwise equal at every step (the same operations per element), and the BF16 values equal the separate run's copy
    /// except at exact ties of the master. Clipping active or off, decay on or off, lengths from 1 to several thread chunks.
    /// </summary>
    [Theory]
    [MemberData(nameof(AdamWCases))]
    public void SplitAdamWJoinedMastersAndMomentsAreBitwiseTheSeparateMasterAdamW(int n, bool decay, bool clip, DType gradientType)
    {
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        var initial = new float[n];
        for (int i = 0; i < n; i++) initial[i] = (float)(rng.NextDouble() * 2 - 1) * 0.05f;
        if (n > 3) { initial[0] = 0f; initial[1] = -0f; initial[2] = 1e-40f; initial[3] = BitConverter.UInt32BitsToSingle(0x3C80_8000); }

        var masters = _cpu.FromHost<float>(initial, new Shape(n));
        var m = _cpu.Zeros(new Shape(n), DType.F32);
        var v = _cpu.Zeros(new Shape(n), DType.F32);
        var copy = _cpu.Allocate(new Shape(n), DType.BF16);
        var values = _cpu.Allocate(new Shape(n), DType.BF16);
        var low = _cpu.Allocate(new Shape(n), DType.U16);
        var splitM = _cpu.Zeros(new Shape(n), DType.F32);
        var splitV = _cpu.Zeros(new Shape(n), DType.F32);
        var joined = _cpu.Allocate(new Shape(n), DType.F32);
        _cpu.SplitMasters(_cpu.FromHost<float>(initial, new Shape(n)), values, low);

        for (long t = 1; t <= 6; t++)
        {
            var g = new BFloat16[n];
            for (int i = 0; i < n; i++) g[i] = BFloat16.FromSingle((float)(rng.NextDouble() * 2 - 1) * 0.3f);
            var bf16Grads = _cpu.FromHost<BFloat16>(g, new Shape(n));
            var wide = _cpu.Allocate(new Shape(n), DType.F32);
            _cpu.Copy(bf16Grads, wide);                                   // exact widening
            double sumOfSquares = g.Sum(x => (double)x.ToSingle() * x.ToSingle());
            var sum = clip ? _cpu.FromHost<float>([(float)sumOfSquares], new Shape(1)) : null;
            // Max norm 0.5 against a norm of about 0.17 sqrt(n): clipping acts for n > 8.
            var step = new AdamWStep(3e-3, 0.9, 0.95, 1e-8, decay ? 0.1 : 0.0, t, clip ? 0.5 : 0.0);

            _cpu.AdamW(masters, wide, m, v, step, sum, copy);
            _cpu.AdamWSplit(values, low, gradientType == DType.BF16 ? bf16Grads : wide, splitM, splitV, step, sum);
            _cpu.JoinMasters(values, low, joined);

            string where = $"n = {n}, decay {decay}, clip {clip}, {gradientType} gradients, step {t}";
            Assert.True(Bits(masters).SequenceEqual(Bits(joined)), $"{where}: the joined masters differ from the separate masters");
            Assert.True(Bits(m).SequenceEqual(Bits(splitM)), $"{where}: m differs");
            Assert.True(Bits(v).SequenceEqual(Bits(splitV)), $"{where}: v differs");
            var master = Bits(masters);
            var rne = High(copy);
            var hi = High(values);
            for (int i = 0; i < n; i++)
                if (hi[i] != rne[i])
                    Assert.True((master[i] & 0xFFFFu) == 0x8000u, $"{where}, element {i}: value 0x{hi[i]:X4} differs from round-to-nearest-even 0x{rne[i]:X4} of master 0x{master[i]:X8}, which is not a tie");
        }
    }

    [Fact]
    public void SplitOpsRefuseWrongDTypesAndShapesNamingTheOperand()
    {
        var f32 = _cpu.Zeros(new Shape(8), DType.F32);
        var bf16 = _cpu.Zeros(new Shape(8), DType.BF16);
        var u16 = _cpu.Zeros(new Shape(8), DType.U16);
        var e = Assert.Throws<ArgumentException>(() => _cpu.SplitMasters(f32, bf16, bf16));
        Assert.Contains("lowWords", e.Message);
        e = Assert.Throws<ArgumentException>(() => _cpu.JoinMasters(bf16, u16, _cpu.Zeros(new Shape(7), DType.F32)));
        Assert.Contains("masters", e.Message);
        e = Assert.Throws<ArgumentException>(() => _cpu.AdamWSplit(bf16, u16, _cpu.Zeros(new Shape(8), DType.F16), f32, f32, new AdamWStep(1e-3, 0.9, 0.95, 1e-8, 0, 1, 0)));
        Assert.Contains("gradients", e.Message);
    }

    private uint[] Bits(Tensor f32) => Array.ConvertAll(_cpu.ToArray<float>(f32), BitConverter.SingleToUInt32Bits);

    private ushort[] High(Tensor bf16) => Array.ConvertAll(_cpu.ToArray<BFloat16>(bf16), x => x.Bits);
}
