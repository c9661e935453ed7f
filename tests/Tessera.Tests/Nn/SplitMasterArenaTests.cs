using Tessera.Distributed.InProcess;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Checkpoints;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Nn;

/// <summary>
/// A BF16 <see cref="ParameterArena"/> with <see cref="MasterWeights.Split"/> on the CPU backend, against the same model with
/// separate F32 masters: memory, initialization, Hugging Face export and load (what a training checkpoint holds), and the
/// paths that refuse it. The CPU backend cannot compute in BF16, so training a BF16 model runs on the GPU
/// (<c>Cuda/Training/SplitMastersTrainingTests</c>); the split update itself is checked here at the backend level
/// (<see cref="Tessera.Tests.Tensors.CpuSplitMastersTests"/>). Every comparison is exact (tolerance 0): the split is integer
/// arithmetic on the masters' bits.
/// </summary>
public sealed class SplitMasterArenaTests : IDisposable
{
    private readonly CpuBackend _cpu = new(2);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("tessera-split-masters-");

    public void Dispose() => _dir.Delete(recursive: true);

    [Theory]
    [InlineData("gpt2-tiny")]
    [InlineData("llama-debug")]
    public void SplitMastersHoldTwoBytesPerElementLessThanSeparateMasters(string preset)
    {
        var config = ModelPresets.Get(preset);
        var separate = new Transformer(config, _cpu, DType.BF16).Parameters;
        var split = new Transformer(config, _cpu, DType.BF16, masters: MasterWeights.Split).Parameters;
        // Separate: value 2 + gradient 2 + master 4 bytes per element; split: value 2 + gradient 2 + low word 2.
        Assert.Equal(8 * separate.Length, separate.AllocatedBytes);
        Assert.Equal(6 * split.Length, split.AllocatedBytes);
        Assert.Equal(separate.AllocatedBytes - 2 * split.Length, split.AllocatedBytes);
        Assert.Null(split.Masters);
        Assert.Equal(DType.U16, split.LowWords!.DType);
        Assert.Equal(DType.F32, split.MasterDType);
    }

    /// <summary>
    /// The same initialization into both arenas: the joined split masters are the separate F32 masters bit for bit, and the
    /// BF16 values equal the separate arena's (round to nearest even) except where a master is an exact tie.
    /// </summary>
    [Fact]
    public void InitializationWritesTheSameMastersSplitAndValuesThatDifferOnlyAtTies()
    {
        var config = ModelPresets.Get("gpt2-tiny");
        var separate = new Transformer(config, _cpu, DType.BF16);
        var split = new Transformer(config, _cpu, DType.BF16, masters: MasterWeights.Split);
        separate.InitializeWeights(seed: 4);
        split.InitializeWeights(seed: 4);
        AssertSameMasters(separate.Parameters, split.Parameters, "after initialization");
    }

    /// <summary>
    /// A Hugging Face export (the weights of a training checkpoint) of a split arena writes the joined F32 masters, and
    /// loading it into a fresh split arena restores the values and the low words bit for bit; loaded into a separate arena
    /// it gives the same masters.
    /// </summary>
    [Fact]
    public void ExportWritesJoinedMastersAndLoadingSplitsThemBackExactly()
    {
        var config = ModelPresets.Get("gpt2-tiny");
        var split = new Transformer(config, _cpu, DType.BF16, masters: MasterWeights.Split);
        split.InitializeWeights(seed: 6);
        // Masters that a BF16 value cannot hold: every low word nonzero after this.
        var arena = split.Parameters;
        var rng = new Random(6);
        foreach (var p in arena.Parameters)
        {
            var values = new double[p.NumElements];
            for (int i = 0; i < values.Length; i++) values[i] = (rng.NextDouble() * 2 - 1) * 0.02;
            p.WriteMasterOrValue(t => _cpu.CopyFromHost<float>(Array.ConvertAll(values, x => (float)x), t));
        }
        string dir = Path.Combine(_dir.FullName, "model");
        HuggingFaceModelDirectory.Export(dir, config, arena.Parameters, _cpu);

        var restored = new Transformer(config, _cpu, DType.BF16, masters: MasterWeights.Split);
        var separate = new Transformer(config, _cpu, DType.BF16);
        using (var hf = HuggingFaceModelDirectory.Open(dir, config))
        {
            hf.LoadInto(restored.Parameters.Parameters, _cpu);
            hf.LoadInto(separate.Parameters.Parameters, _cpu);
        }
        Assert.Equal(_cpu.ToArray<BFloat16>(arena.Values), _cpu.ToArray<BFloat16>(restored.Parameters.Values));
        Assert.Equal(_cpu.ToArray<ushort>(arena.LowWords!), _cpu.ToArray<ushort>(restored.Parameters.LowWords!));
        AssertSameMasters(separate.Parameters, restored.Parameters, "after loading the export");
        TrainedModel.EnsureFinite(restored.Parameters.Parameters, restored.Backend, dir);
    }

    /// <summary>
    /// Nothing reads or writes the BF16 value in a split master's place: <see cref="Parameter.MasterOrValue"/> throws naming
    /// the accessors, the arena cannot release its masters, and the paths without split support refuse with the option's
    /// name (F16, F32 and frozen arenas and models; the offloaded optimizer).
    /// </summary>
    [Fact]
    public void PathsThatCannotKeepSplitMastersRefuseThemNamingTheOption()
    {
        var config = ModelPresets.Get("gpt2-tiny");
        var model = new Transformer(config, _cpu, DType.BF16, masters: MasterWeights.Split);
        var p = model.Parameters.Parameters[0];
        Assert.Null(p.Master);
        Assert.Contains("ReadMasterOrValue", Assert.Throws<InvalidOperationException>(() => p.MasterOrValue).Message);
        Assert.Contains("MasterWeights.Split", Assert.Throws<InvalidOperationException>(() => model.Parameters.ReleaseMasters()).Message);

        var layout = new Transformer(config, _cpu, DType.BF16, ArenaStorage.Deferred).Layout;
        Assert.Contains("F16 arenas keep separate", Assert.Throws<ArgumentException>(() => new ParameterArena(layout, _cpu, DType.F16, masters: MasterWeights.Split)).Message);
        Assert.Contains("F32 values are their own masters", Assert.Throws<ArgumentException>(() => new ParameterArena(layout, _cpu, DType.F32, masters: MasterWeights.Split)).Message);
        Assert.Contains("frozen", Assert.Throws<ArgumentException>(() => new ParameterArena(layout, _cpu, DType.BF16, frozen: true, masters: MasterWeights.Split)).Message);
        Assert.Contains("frozen base has no masters", Assert.Throws<ArgumentException>(() => new Transformer(config, _cpu, DType.BF16, ArenaStorage.Frozen, masters: MasterWeights.Split)).Message);
        Assert.Contains("needs a BF16 model", Assert.Throws<ArgumentException>(() => new Transformer(config, _cpu, DType.F32, ArenaStorage.Deferred, masters: MasterWeights.Split)).Message);

        // Data parallelism and ZeRO 1-3 keep split masters (Training/Parallel/SplitMastersDataParallelTests); offload refuses them.
        var group = InProcessProcessGroup.Create(1, TimeSpan.FromSeconds(10))[0];
        var e = Assert.Throws<NotSupportedException>(() => DataParallelism.Create(model, group, new DataParallelOptions { Stage = ZeroStage.OptimizerStates, OffloadOptimizer = true },
            new AdamWOptions(), new CpuBackend(1)));
        Assert.Contains("MasterWeights.Split", e.Message);
    }

    /// <summary>Joined masters of <paramref name="split"/> equal <paramref name="separate"/>'s F32 masters; values equal except at ties.</summary>
    private void AssertSameMasters(ParameterArena separate, ParameterArena split, string when)
    {
        var joined = _cpu.Allocate(split.Values.Shape, DType.F32);
        _cpu.JoinMasters(split.Values, split.LowWords!, joined);
        var expected = Array.ConvertAll(_cpu.ToArray<float>(separate.Masters!), BitConverter.SingleToUInt32Bits);
        var got = Array.ConvertAll(_cpu.ToArray<float>(joined), BitConverter.SingleToUInt32Bits);
        var rne = _cpu.ToArray<BFloat16>(separate.Values);
        var hi = _cpu.ToArray<BFloat16>(split.Values);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(expected[i] == got[i], $"{when}: arena element {i}: joined master 0x{got[i]:X8}, separate master 0x{expected[i]:X8}");
            if (!rne[i].Equals(hi[i]))
                Assert.True((expected[i] & 0xFFFFu) == 0x8000u, $"{when}: arena element {i}: value 0x{hi[i].Bits:X4} differs from 0x{rne[i].Bits:X4} though master 0x{expected[i]:X8} is no tie");
        }
    }
}
