using System.Runtime.InteropServices;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Models.HuggingFace;

/// <summary>
/// Tensor-parallel Hugging Face loading reads each rank's slice only. The reference is the old path: the whole tensor read
/// and converted, then cut with <see cref="Parameter.LocalValues{T}"/>. Both convert the same stored values to F32
/// exactly (F32, BF16 and F16 widen without rounding), so they must agree bit for bit; and the bytes a rank reads must be
/// exactly the bytes of the stored elements its slices are made of (padding rows are zeros, never read).
/// </summary>
public sealed class SliceLoadingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-slices-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static TransformerConfig Config(string preset) => preset == "gpt2-debug"
        ? ModelPresets.Get(preset) with { PaddedVocabSize = 128 }   // 96 real rows, 32 padding: at tp 4 rank 3 holds padding only
        : ModelPresets.Get(preset);

    /// <summary>A Hugging Face directory of <paramref name="config"/> with random weights (seed logged in the name), stored in <paramref name="dtype"/>.</summary>
    private string WriteModel(TransformerConfig config, DType dtype, int seed)
    {
        var rng = new Random(seed);
        var map = HuggingFaceWeightMap.For(config);
        var hf = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        foreach (var e in map.Entries)
            foreach (var (name, shape) in e.Sources)
                hf[name] = new HostTensor(shape, Enumerable.Range(0, (int)shape.NumElements).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray());
        string dir = Path.Combine(_dir, $"{config.Family}-{config.ModelType}-{dtype}-seed{seed}");
        HuggingFaceModelDirectory.Export(dir, config, map.ToCanonical(hf));
        if (dtype != DType.F32)
        {
            var writer = new SafetensorsWriter();
            foreach (var (name, t) in hf)
            {
                byte[] bytes = dtype == DType.BF16
                    ? MemoryMarshal.AsBytes(Array.ConvertAll(t.Data, BFloat16.FromSingle).AsSpan()).ToArray()
                    : MemoryMarshal.AsBytes(Array.ConvertAll(t.Data, x => (Half)x).AsSpan()).ToArray();
                writer.Add(name, dtype, t.Shape, bytes);
            }
            writer.Write(Path.Combine(dir, "model.safetensors"));
        }
        return dir;
    }

    private static int[] Bits(float[] values) => Array.ConvertAll(values, BitConverter.SingleToInt32Bits);

    /// <summary>Elements of <paramref name="p"/>'s slice that the file stores (not padding rows of the vocabulary).</summary>
    private static long StoredElements(Parameter p, WeightMapEntry entry)
    {
        if (entry.Transform != WeightTransform.PadRows) return p.NumElements;
        long inner = p.GlobalShape.NumElements / p.GlobalShape[0], realRows = entry.Sources[0].Shape[0];
        var stored = new byte[p.GlobalShape.NumElements];
        for (long i = 0; i < stored.Length; i++) stored[i] = (byte)(i / inner < realRows ? 1 : 0);
        return p.LocalValues(stored).Sum(x => (long)x);
    }

    [Theory]
    [InlineData("gpt2-debug", 2, DType.F32)]     // Conv1D: column-parallel rows are strided reads, row-parallel columns one run
    [InlineData("gpt2-debug", 4, DType.BF16)]
    [InlineData("llama-debug", 2, DType.BF16)]   // q/k/v stacked: each rank's heads from three tensors; o/down: a run per row
    [InlineData("llama-debug", 4, DType.F16)]    // 2 key/value heads over 4 ranks: replicated in pairs
    [InlineData("qwen2-debug", 2, DType.F16)]    // stacked q/k/v biases
    [InlineData("llama-headsize-debug", 2, DType.F32)]   // o_proj is C x H·D = 48 x 64
    [InlineData("qwen3-debug", 2, DType.BF16)]           // q_norm and k_norm whole on every rank
    [InlineData("gemma3-debug", 2, DType.F32)]           // 1 + w norm weights whole on every rank
    [InlineData("phi3-debug", 2, DType.BF16)]            // qkv_proj's rows of each rank's heads; gate and up: rows of each half of gate_up_proj
    [InlineData("phi3-debug", 4, DType.F16)]
    [InlineData("phi4-mini-debug", 2, DType.F32)]        // tied head (no lm_head tensor to read)
    [InlineData("mixtral-debug", 2, DType.BF16)]         // w1/w3: each rank's rows of every expert; w2: its columns; the router whole
    [InlineData("mixtral-debug", 4, DType.F32)]
    [InlineData("qwen3-moe-debug", 2, DType.F16)]
    [InlineData("qwen2-moe-debug", 2, DType.BF16)]       // the shared expert sliced as the experts, its gate whole
    public void EachRankReadsOnlyItsSliceAndGetsTheSliceOfTheWholeTensorBitForBit(string preset, int tp, DType stored)
    {
        var config = Config(preset);
        int seed = 100 + tp;
        string dir = WriteModel(config, stored, seed);
        long wholeBytes;
        using (var whole = HuggingFaceModelDirectory.Open(dir, config))
        {
            whole.ReadAllCanonical();
            wholeBytes = whole.BytesRead;
        }
        Assert.Equal(new FileInfo(Path.Combine(dir, "model.safetensors")).Length - HeaderBytes(dir), wholeBytes);

        var bytes = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            using var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var model = new Tessera.Models.Transformer(config, ctx.Backend, DType.F32, tensorParallelism: tensor);
            using var reference = HuggingFaceModelDirectory.Open(dir, config);
            using var sliced = HuggingFaceModelDirectory.Open(dir, config);
            long expected = 0;
            foreach (var p in model.Layout.Parameters)
            {
                var local = sliced.ReadLocal(p);
                Assert.Equal(p.Shape.NumElements, local.LongLength);
                Assert.True(Bits(p.LocalValues(reference.ReadCanonical(p.Name).Data)).AsSpan().SequenceEqual(Bits(local)),
                    $"rank {ctx.Rank}: '{p.Name}' ({p.Placement}) differs from the slice of the whole tensor (seed {seed})");
                expected += StoredElements(p, sliced.Map.Entries.First(e => e.Canonical == p.Name)) * stored.SizeInBytes();
            }
            Assert.Equal(expected, sliced.BytesRead);
            return sliced.BytesRead;
        }, TimeSpan.FromSeconds(60));
        // Every rank read less than the whole model; together, what the replicated tensors cost on top of one copy.
        Assert.All(bytes, b => Assert.True(b < wholeBytes, $"a rank read {b} of the model's {wholeBytes} bytes"));
        Assert.True(bytes.Max() < 0.75 * wholeBytes, $"ranks read {string.Join(", ", bytes)} of {wholeBytes} bytes");
    }

    [Fact]
    public void LoadIntoATensorParallelModelFillsEachRankWithItsSliceFromABf16File()
    {
        var config = Config("llama-debug");
        string dir = WriteModel(config, DType.BF16, seed: 7);
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = new Tessera.Models.Transformer(config, ctx.Backend, DType.F32,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: true), ctx.Factory));
            using var hf = HuggingFaceModelDirectory.Open(dir, config);
            hf.LoadInto(model.Layout.Parameters, ctx.Backend);
            using var reference = HuggingFaceModelDirectory.Open(dir, config);
            foreach (var p in model.Layout.Parameters)
                Assert.Equal(Bits(p.LocalValues(reference.ReadCanonical(p.Name).Data)), Bits(ctx.Backend.ToArray<float>(p.Value)));
            return 0;
        }, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void ARunReadOfASafetensorsTensorReadsOnlyItsBytesAndMergesAdjacentRuns()
    {
        string path = Path.Combine(_dir, "runs.safetensors");
        var data = Enumerable.Range(0, 6 * 5).Select(i => (float)i).ToArray();   // (6, 5)
        new SafetensorsWriter().Add("w", new Shape(6, 5), data).Write(path);
        using var file = SafetensorsFile.Open(path);
        var got = new float[2 + 3 + 5];
        file.ReadAsSingle("w", [(3, 2), (10, 3), (13, 5)], got);   // the last two are adjacent: read as one
        Assert.Equal(new float[] { 3, 4, 10, 11, 12, 13, 14, 15, 16, 17 }, got);
        Assert.Equal(got.Length * 4L, file.BytesRead);
        Assert.Throws<ArgumentOutOfRangeException>(() => file.ReadAsSingle("w", [(28, 3)], new float[3]));
        Assert.Throws<ArgumentException>(() => file.ReadAsSingle("w", [(0, 3)], new float[2]));
        Assert.Equal(got.Length * 4L, file.BytesRead);   // refused reads read nothing
    }

    /// <summary>The 8-byte length plus the JSON header of the directory's single file.</summary>
    private static long HeaderBytes(string dir)
    {
        using var stream = File.OpenRead(Path.Combine(dir, "model.safetensors"));
        var prefix = new byte[8];
        stream.ReadExactly(prefix);
        return 8 + (long)BitConverter.ToUInt64(prefix);
    }
}
