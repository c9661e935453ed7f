using System.Runtime.InteropServices;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// <see cref="CpuBackend.AdamWStaged"/> (the fused host update of ZeRO-Offload) against the unfused sequence it replaces:
/// the staged gradient copied into a tensor of the staged dtype, widened to the parameters' dtype, <see cref="CpuBackend.AdamW"/>
/// (with a BF16 <c>lowPrecisionCopy</c> for BF16 staging), and the values read out. Both run the same operations in the same
/// order per element, so everything must agree bit for bit (no tolerance): parameters, moments and the staged values, over
/// three steps, for lengths around the vector widths and across several 64K-element thread blocks.
/// </summary>
public sealed class CpuStagedAdamWTests
{
    private readonly CpuBackend _cpu = new(2);

    public static TheoryData<DType, DType, int, Clipping, bool> Cases()
    {
        var data = new TheoryData<DType, DType, int, Clipping, bool>();
        (DType, DType)[] pairs = [(DType.F32, DType.BF16), (DType.F32, DType.F32), (DType.F64, DType.F64)];
        foreach (var (parameters, staged) in pairs)
        {
            // 1, 7, 15, 17, 33: inside or just past one vector (4, 8 or 16 lanes, two for BF16); 1001: a scalar tail after
            // many vectors; 200_003: four thread blocks, the last one ending in a tail.
            foreach (int n in new[] { 1, 7, 15, 17, 33, 1001 })
                data.Add(parameters, staged, n, Clipping.Active, true);
            data.Add(parameters, staged, 200_003, Clipping.Active, true);
            data.Add(parameters, staged, 200_003, Clipping.None, false);
            data.Add(parameters, staged, 1001, Clipping.ThresholdZero, true);
            data.Add(parameters, staged, 1001, Clipping.Inactive, false);
        }
        return data;
    }

    /// <summary>How the step clips: no sum of squares; a sum but MaxGradNorm 0; a norm under the threshold; a norm over it.</summary>
    public enum Clipping { None, ThresholdZero, Inactive, Active }

    [Theory]
    [MemberData(nameof(Cases))]
    public void StagedAdamWIsBitIdenticalToWideningThenAdamWThenCopyingOut(DType parameterType, DType stagedType, int n, Clipping clipping, bool decay)
    {
        var rng = new Random(90 + n);
        int size = stagedType.SizeInBytes();
        var initial = TestTensors.Normal(rng, n);
        initial[0] = 3e30;                          // large, and (below) tiny and signed zeros
        if (n > 3) { initial[1] = 1e-41; initial[2] = -0.0; initial[3] = 0.0; }
        var (p, m, v) = State(initial, parameterType, n);
        var (refP, refM, refV) = State(initial, parameterType, n);
        var staged = _cpu.Allocate(new Shape(n), stagedType);        // the reference's copy of the staged gradient
        var wide = _cpu.Allocate(new Shape(n), parameterType);       // ... widened
        var low = stagedType == parameterType ? null : _cpu.Allocate(new Shape(n), stagedType);
        for (long t = 1; t <= 3; t++)
        {
            var g = TestTensors.Normal(rng, n, 0.1);
            if (n > 5) { g[4] = 0; g[5] = 1e-42; }
            byte[] gradients = Bytes(TestTensors.FromDoubles(_cpu, g, stagedType, n));
            // sqrt(n) * 0.1 is the norm: 0.1 (n = 1) to 45; thresholds 1e-3 (active) or 1e6 (inactive).
            double sumOfSquares = g.Sum(x => x * x);
            var step = new AdamWStep(1e-2, 0.9, 0.95, 1e-8, decay ? 0.1 : 0.0, t, clipping switch
            {
                Clipping.None or Clipping.ThresholdZero => 0.0,
                Clipping.Inactive => 1e6,
                _ => 1e-3,
            });
            var sum = clipping == Clipping.None ? null : TestTensors.FromDoubles(_cpu, [sumOfSquares], DType.F32, 1);

            // Unfused: staging -> tensor, widen, AdamW (+ BF16 copy), values -> staging.
            CopyIn(gradients, staged);
            _cpu.Copy(staged, wide);
            _cpu.AdamW(refP, wide, refM, refV, step, sum, low);
            byte[] expectedValues = Bytes(low ?? refP);

            var values = new byte[n * size];
            Array.Fill(values, (byte)0xA5);   // every byte must be written
            _cpu.AdamWStaged(p, gradients, m, v, values, stagedType, step, sum);

            string where = $"{parameterType} staged as {stagedType}, n = {n}, {clipping}, decay {decay}, step {t}";
            AssertSameBytes(Bytes(refP), Bytes(p), $"{where}: parameters");
            AssertSameBytes(Bytes(refM), Bytes(m), $"{where}: m");
            AssertSameBytes(Bytes(refV), Bytes(v), $"{where}: v");
            AssertSameBytes(expectedValues, values, $"{where}: staged values");
        }
    }

    [Theory]
    [InlineData(DType.F32, DType.BF16)]
    [InlineData(DType.F32, DType.F32)]
    [InlineData(DType.F64, DType.F64)]
    public void StagedAdamWMayWriteTheValuesOverTheGradient(DType parameterType, DType stagedType)
    {
        const int n = 70_001;
        var rng = new Random(91);
        var initial = TestTensors.Normal(rng, n);
        var (p, m, v) = State(initial, parameterType, n);
        var (inPlaceP, inPlaceM, inPlaceV) = State(initial, parameterType, n);
        var step = new AdamWStep(1e-2, 0.9, 0.95, 1e-8, 0.1, 1, 1.0);
        var sum = TestTensors.FromDoubles(_cpu, [50.0], DType.F32, 1);
        byte[] gradients = Bytes(TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, n, 0.1), stagedType, n));
        var values = new byte[gradients.Length];
        _cpu.AdamWStaged(p, gradients, m, v, values, stagedType, step, sum);
        _cpu.AdamWStaged(inPlaceP, gradients, inPlaceM, inPlaceV, gradients, stagedType, step, sum);
        AssertSameBytes(values, gradients, "values written over the gradient");
        AssertSameBytes(Bytes(p), Bytes(inPlaceP), "parameters");
        AssertSameBytes(Bytes(v), Bytes(inPlaceV), "v");
    }

    [Fact]
    public void StagedAdamWRefusesUnsupportedDTypesAndWrongBufferLengthsNamingThem()
    {
        var (p, m, v) = State(new double[8], DType.F32, 8);
        var step = new AdamWStep(1e-2, 0.9, 0.95, 1e-8, 0.0, 1, 0.0);
        Assert.False(CpuBackend.SupportsAdamWStaged(DType.F32, DType.F16));
        Assert.False(CpuBackend.SupportsAdamWStaged(DType.F64, DType.F32));
        var e = Assert.Throws<NotSupportedException>(() => _cpu.AdamWStaged(p, new byte[16], m, v, new byte[16], DType.F16, step));
        Assert.Contains("F32 parameters staged as F16", e.Message);
        var g = Assert.Throws<ArgumentException>(() => _cpu.AdamWStaged(p, new byte[15], m, v, new byte[16], DType.BF16, step));
        Assert.Contains("gradients hold 15 bytes", g.Message);
        var o = Assert.Throws<ArgumentException>(() => _cpu.AdamWStaged(p, new byte[16], m, v, new byte[32], DType.BF16, step));
        Assert.Contains("values hold 32 bytes", o.Message);
    }

    private (Tensor P, Tensor M, Tensor V) State(double[] initial, DType dtype, int n) =>
        (TestTensors.FromDoubles(_cpu, initial, dtype, n), _cpu.Zeros(new Shape(n), dtype), _cpu.Zeros(new Shape(n), dtype));

    private byte[] Bytes(Tensor t) => t.DType switch
    {
        DType.F32 => MemoryMarshal.AsBytes(_cpu.ToArray<float>(t).AsSpan()).ToArray(),
        DType.F64 => MemoryMarshal.AsBytes(_cpu.ToArray<double>(t).AsSpan()).ToArray(),
        DType.BF16 => MemoryMarshal.AsBytes(_cpu.ToArray<BFloat16>(t).AsSpan()).ToArray(),
        _ => throw new ArgumentException($"no byte view of {t.DType} here"),
    };

    private void CopyIn(byte[] bytes, Tensor t)
    {
        switch (t.DType)
        {
            case DType.F32: _cpu.CopyFromHost<float>(MemoryMarshal.Cast<byte, float>(bytes.AsSpan()), t); break;
            case DType.F64: _cpu.CopyFromHost<double>(MemoryMarshal.Cast<byte, double>(bytes.AsSpan()), t); break;
            case DType.BF16: _cpu.CopyFromHost<BFloat16>(MemoryMarshal.Cast<byte, BFloat16>(bytes.AsSpan()), t); break;
            default: throw new ArgumentException($"no byte view of {t.DType} here");
        }
    }

    private static void AssertSameBytes(byte[] expected, byte[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        int first = expected.AsSpan().CommonPrefixLength(actual);
        if (first < expected.Length)
            Assert.Fail($"{what}: first differing byte at {first} of {expected.Length} (bit-identity expected: same operations, same inputs)");
    }
}
