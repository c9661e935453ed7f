using System.Runtime.InteropServices;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// The host half of ZeRO-Offload for a BF16 arena with F32 masters, on the CPU: the CPU backend cannot reduce or
/// train in BF16, but it stores BF16 and casts, which is all the offloaded update does with it (copy the BF16
/// gradient off the "device", widen it, update F32 masters, copy the BF16 values back). Reference: the same CPU
/// AdamW kernel on F32 copies of the whole arena, one call per parameter, so any wrong offset, piece boundary,
/// slot reuse or dtype in the pipeline shows as a bit difference.
/// </summary>
public sealed class OffloadedAdamWTests
{
    private const double LearningRate = 1e-2;
    private const float SumOfSquares = 16f;   // norm 4 > MaxGradNorm 1: clipping is active (factor ~1/4)

    [Theory]
    [InlineData("gpt2-debug", ZeroStage.None, 1, 0, 1000L)]            // one rank owns all; pieces cut inside parameters
    [InlineData("gpt2-debug", ZeroStage.OptimizerStates, 3, 1, 1000L)] // buckets split three ways (padding chunks)
    [InlineData("llama-debug", ZeroStage.Parameters, 2, 1, 777L)]      // segments; pieces not a multiple of the alignment
    [InlineData("gpt2-debug", ZeroStage.Gradients, 2, 0, OffloadedAdamW.DefaultPieceElements)]   // one piece per unit
    public void HostUpdateOfF32MastersFromBf16GradientsMatchesAdamWAndWritesTheBf16Copy(string preset, ZeroStage stage, int world, int rank, long pieceElements)
    {
        var device = new CpuBackend(1);
        var host = new CpuBackend(1);
        var model = new Transformer(ModelPresets.Get(preset), device, DType.BF16);
        model.InitializeWeights(seed: 5);
        var arena = model.Parameters;
        int n = checked((int)arena.Length);
        var layout = new ShardLayout(model.Layout, stage, world, rank, bucketElements: 1500);
        var offload = new OffloadedAdamW(arena, layout, host, pieceElements);
        int units = layout.Owned.Select(r => r.Unit).Distinct().Count();
        if (pieceElements < 1500) Assert.True(offload.PieceCount > units, $"{offload.PieceCount} pieces for {units} units: the test must cut pieces inside units");

        // Loading takes the F32 masters, not their BF16 copy: the initial masters are mostly not BF16-representable.
        var initialMasters = device.ToArray<float>(arena.Masters!);
        var initialValues = device.ToArray<BFloat16>(arena.Values);
        Assert.Contains(initialMasters, m => BFloat16.FromSingle(m).ToSingle() != m);
        foreach (var r in layout.Owned)
            AssertBits(Slice(initialMasters, r.ArenaOffset, r.Length), host.ToArray<float>(Narrow(offload.Masters, r.ShardOffset, r.Length)), $"loaded master at arena {r.ArenaOffset}");

        // The reference: F32 masters, moments and (BF16-valued) gradients of the whole arena.
        var reference = host.FromHost<float>(initialMasters, new Shape(n));
        var refM = host.Zeros(new Shape(n), DType.F32);
        var refV = host.Zeros(new Shape(n), DType.F32);
        var refGrad = host.Allocate(new Shape(n), DType.F32);
        var refLow = host.Allocate(new Shape(n), DType.BF16);
        var refSum = host.FromHost<float>([SumOfSquares], new Shape(1));
        var deviceSum = device.FromHost<float>([SumOfSquares], new Shape(1));
        var rng = new Random(17);
        for (long step = 1; step <= 3; step++)
        {
            var grads = new BFloat16[n];
            for (int i = 0; i < n; i++) grads[i] = BFloat16.FromSingle((float)(rng.NextDouble() * 2 - 1) * 0.05f);
            device.CopyFromHost<BFloat16>(grads, arena.Grads);
            host.CopyFromHost<float>(grads.Select(g => g.ToSingle()).ToArray(), refGrad);
            offload.Update(r => arena.Grads.Narrow(r.ArenaOffset, new Shape((int)r.Length)), deviceSum, r => Step(step, r.WeightDecay));
            for (int i = 0; i < arena.Parameters.Count; i++)
            {
                var p = arena.Parameters[i];
                long end = i + 1 < arena.Parameters.Count ? arena.Parameters[i + 1].Offset : arena.Length;
                var s = new Shape((int)(end - p.Offset));
                host.AdamW(reference.Narrow(p.Offset, s), refGrad.Narrow(p.Offset, s), refM.Narrow(p.Offset, s), refV.Narrow(p.Offset, s),
                    Step(step, p.WeightDecay), refSum, refLow.Narrow(p.Offset, s));
            }
        }

        var expected = host.ToArray<float>(reference);
        var expectedM = host.ToArray<float>(refM);
        var expectedV = host.ToArray<float>(refV);
        var expectedLow = host.ToArray<BFloat16>(refLow);
        var values = device.ToArray<BFloat16>(arena.Values);
        var owned = new bool[n];
        foreach (var r in layout.Owned)
        {
            string where = $"owned range at arena {r.ArenaOffset} (+{r.Length})";
            AssertBits(Slice(expected, r.ArenaOffset, r.Length), host.ToArray<float>(Narrow(offload.Masters, r.ShardOffset, r.Length)), $"{where}: master");
            AssertBits(Slice(expectedM, r.ArenaOffset, r.Length), host.ToArray<float>(Narrow(offload.M, r.ShardOffset, r.Length)), $"{where}: m");
            AssertBits(Slice(expectedV, r.ArenaOffset, r.Length), host.ToArray<float>(Narrow(offload.V, r.ShardOffset, r.Length)), $"{where}: v");
            for (long i = r.ArenaOffset; i < r.ArenaOffset + r.Length; i++) owned[i] = true;
        }
        for (int i = 0; i < n; i++)
        {
            // Owned: the BF16 copy of the updated master; elsewhere the update must not write the device values.
            var want = owned[i] ? expectedLow[i] : initialValues[i];
            if (!want.Equals(values[i])) Assert.Fail($"device value [{i}] (owned: {owned[i]}): expected {want}, got {values[i]}");
        }
        Assert.Contains(Enumerable.Range(0, n), i => owned[i] && expected[i] != initialMasters[i]);

        // The update never writes the device masters; publishing copies the owned host masters there, nothing else.
        AssertBits(initialMasters, device.ToArray<float>(arena.Masters!), "device masters before publishing");
        offload.PublishMasters();
        var published = device.ToArray<float>(arena.Masters!);
        for (int i = 0; i < n; i++)
        {
            float want = owned[i] ? expected[i] : initialMasters[i];
            if (BitConverter.SingleToInt32Bits(want) != BitConverter.SingleToInt32Bits(published[i]))
                Assert.Fail($"published master [{i}] (owned: {owned[i]}): expected {want:R}, got {published[i]:R}");
        }
    }

    [Theory]
    [InlineData(DType.BF16, ZeroStage.OptimizerStates, 3, 1, 777L, true)]    // pieces cut inside parameters, not a multiple of any vector width
    [InlineData(DType.BF16, ZeroStage.Gradients, 2, 0, OffloadedAdamW.DefaultPieceElements, false)]
    [InlineData(DType.F32, ZeroStage.None, 1, 0, 1000L, true)]
    [InlineData(DType.F32, ZeroStage.Parameters, 2, 1, 777L, false)]
    [InlineData(DType.F64, ZeroStage.Parameters, 2, 1, 777L, true)]
    [InlineData(DType.F64, ZeroStage.None, 1, 0, OffloadedAdamW.DefaultPieceElements, false)]
    public void FusedHostUpdateIsBitIdenticalToTheUnfusedSequence(DType dtype, ZeroStage stage, int world, int rank, long pieceElements, bool clipped)
    {
        // Two identical models, one per path: the fused kernel (the default on a CpuBackend host) and the unfused
        // sequence of IBackend ops it replaced (staging into a tensor, widening, AdamW with the BF16 copy, staging out).
        var device = new CpuBackend(1);
        var host = new CpuBackend(2);
        var fusedModel = new Transformer(ModelPresets.Get("llama-debug"), device, dtype);
        var unfusedModel = new Transformer(ModelPresets.Get("llama-debug"), device, dtype);
        fusedModel.InitializeWeights(seed: 6);
        unfusedModel.InitializeWeights(seed: 6);
        var layout = new ShardLayout(fusedModel.Layout, stage, world, rank, bucketElements: 1500);
        var fused = new OffloadedAdamW(fusedModel.Parameters, layout, host, pieceElements);
        var unfused = new OffloadedAdamW(unfusedModel.Parameters, layout, host, pieceElements, fuse: false);
        Assert.True(fused.FusedHostUpdate);
        Assert.False(unfused.FusedHostUpdate);
        int n = checked((int)fusedModel.Parameters.Length);
        var initialValues = Bytes(device, fusedModel.Parameters.Values);
        var sum = device.FromHost<float>([SumOfSquares], new Shape(1));
        var rng = new Random(18);
        for (long step = 1; step <= 3; step++)
        {
            var grads = device.FromHost<double>(Enumerable.Range(0, n).Select(_ => (rng.NextDouble() * 2 - 1) * 0.05).ToArray(), fusedModel.Parameters.Grads.Shape);
            device.Copy(grads, fusedModel.Parameters.Grads);
            device.Copy(grads, unfusedModel.Parameters.Grads);
            fused.Update(r => fusedModel.Parameters.Grads.Narrow(r.ArenaOffset, new Shape((int)r.Length)), clipped ? sum : null, r => Step(step, r.WeightDecay));
            unfused.Update(r => unfusedModel.Parameters.Grads.Narrow(r.ArenaOffset, new Shape((int)r.Length)), clipped ? sum : null, r => Step(step, r.WeightDecay));
            string where = $"{dtype} arena, step {step}";
            AssertSameBytes(Bytes(host, unfused.Masters), Bytes(host, fused.Masters), $"{where}: host masters");
            AssertSameBytes(Bytes(host, unfused.M), Bytes(host, fused.M), $"{where}: m");
            AssertSameBytes(Bytes(host, unfused.V), Bytes(host, fused.V), $"{where}: v");
            AssertSameBytes(Bytes(device, unfusedModel.Parameters.Values), Bytes(device, fusedModel.Parameters.Values), $"{where}: device values");
        }
        Assert.NotEqual(initialValues, Bytes(device, fusedModel.Parameters.Values));   // the updates did write the values
    }

    [Fact]
    public void OffloadPieceSizeOutsideItsRangeIsRefusedNamingTheField()
    {
        var e = Assert.Throws<ArgumentException>(() => new DataParallelOptions { OffloadPieceElements = 0 }.Validate());
        Assert.Contains("OffloadPieceElements (0)", e.Message);
        Assert.Throws<ArgumentException>(() => new DataParallelOptions { OffloadPieceElements = OffloadedAdamW.MaxPieceElements + 1 }.Validate());
    }

    private static AdamWStep Step(long step, bool decay) => new(LearningRate, 0.9, 0.95, 1e-8, decay ? 0.1 : 0.0, step, 1.0);

    private static Tensor Narrow(Tensor t, long offset, long length) => t.Narrow(offset, new Shape((int)length));

    private static byte[] Bytes(IBackend backend, Tensor t) => t.DType switch
    {
        DType.F32 => MemoryMarshal.AsBytes(backend.ToArray<float>(t).AsSpan()).ToArray(),
        DType.F64 => MemoryMarshal.AsBytes(backend.ToArray<double>(t).AsSpan()).ToArray(),
        DType.BF16 => MemoryMarshal.AsBytes(backend.ToArray<BFloat16>(t).AsSpan()).ToArray(),
        _ => throw new ArgumentException($"no byte view of {t.DType} here"),
    };

    private static void AssertSameBytes(byte[] expected, byte[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        int first = expected.AsSpan().CommonPrefixLength(actual);
        if (first < expected.Length)
            Assert.Fail($"{what}: first differing byte at {first} of {expected.Length} (bit-identity expected: same operations, same inputs)");
    }

    private static float[] Slice(float[] a, long offset, long length) => a.AsSpan((int)offset, (int)length).ToArray();

    private static void AssertBits(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what} [{i}]: expected {expected[i]:R}, got {actual[i]:R} (bit-identity expected: same kernel, same inputs)");
    }
}
