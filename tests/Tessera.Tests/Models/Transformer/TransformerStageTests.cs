using Tessera.Distributed.InProcess;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Transformer;

/// <summary>
/// The pipeline seam of the model: a stage builds only its virtual stages' units (embeddings first, head last, a tied table's
/// copy on the last stage), initializes them as one device does, and running ranges of units forward and backward in turn is
/// running the whole model.
/// </summary>
public sealed class TransformerStageTests
{
    private const int B = 2, T = 8;
    private readonly CpuBackend _cpu = new(1);

    private static TransformerConfig Deep(string preset) => ModelPresets.Get(preset) with { Layers = 8 };

    /// <summary>Stage <paramref name="stage"/> of <paramref name="stages"/> x <paramref name="chunks"/> (groups made without threads: building a stage communicates nothing).</summary>
    private Model Stage(TransformerConfig config, int stages, int stage, int chunks = 1)
    {
        var groups = InProcessProcessGroup.Create(stages, TimeSpan.FromSeconds(5));
        var pipeline = new PipelineParallelism(groups[stage], PipelinePartition.Even(config.Layers, stages, chunks), groups[stage].World.FactoryFor(stage));
        return new Model(config, _cpu, DType.F64, pipeline: pipeline);
    }

    private static string Units(Model m) => string.Join(" ", m.Layout.Units.Select(u => u.Name));

    [Fact]
    public void StagesDeclareOnlyTheUnitsOfTheirVirtualStages()
    {
        var gpt2 = Deep("gpt2-debug");
        Assert.Equal("embeddings blocks.0 blocks.1", Units(Stage(gpt2, 4, 0)));
        Assert.Equal("blocks.2 blocks.3", Units(Stage(gpt2, 4, 1)));
        var last = Stage(gpt2, 4, 3);
        Assert.Equal("blocks.6 blocks.7 head", Units(last));
        // Tied: the last stage holds its own copy of the table, in its head unit, under the table's name.
        Assert.NotNull(last.TiedEmbeddingCopy);
        Assert.Equal("tok_emb.weight", last.TiedEmbeddingCopy!.Name);
        Assert.Equal(last.Layout.Units[^1].Index, last.TiedEmbeddingCopy.Unit);
        Assert.Same(last.TiedEmbeddingCopy, last.Head.Weight);
        Assert.Null(Stage(gpt2, 4, 0).TiedEmbeddingCopy);
        // Every parameter of the whole model, in one device's order, whatever the stage holds.
        var whole = new Model(gpt2, _cpu, DType.F64, Tessera.Nn.ArenaStorage.Deferred);
        Assert.Equal(whole.Layout.Parameters.Select(p => p.Name), Stage(gpt2, 4, 1).WholeLayout.Parameters.Select(p => p.Name));

        var llama = Stage(Deep("llama-debug"), 4, 3);
        Assert.Null(llama.TiedEmbeddingCopy);
        Assert.Contains("lm_head.weight", llama.Layout.Parameters.Select(p => p.Name));
        Assert.DoesNotContain("tok_emb.weight", llama.Layout.Parameters.Select(p => p.Name));

        // Interleaved: stage 1 of 4 with 2 chunks holds blocks 1 and 5, chunk by chunk.
        var interleaved = Stage(gpt2, 4, 1, chunks: 2);
        Assert.Equal("blocks.1 blocks.5", Units(interleaved));
        Assert.Equal((0, 1), interleaved.ChunkUnits(0));
        Assert.Equal((1, 2), interleaved.ChunkUnits(1));
        var first = Stage(gpt2, 4, 0, chunks: 2);
        Assert.Equal("embeddings blocks.0 blocks.4", Units(first));
        Assert.Equal((0, 2), first.ChunkUnits(0));
        Assert.Equal((2, 3), first.ChunkUnits(1));
        var lastInterleaved = Stage(gpt2, 4, 3, chunks: 2);
        Assert.Equal("blocks.3 blocks.7 head", Units(lastInterleaved));
        Assert.Equal((1, 3), lastInterleaved.ChunkUnits(1));
    }

    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    public void StagesInitializeTheirParametersExactlyAsOneDevice(string preset)
    {
        var config = Deep(preset);
        var whole = new Model(config, _cpu, DType.F64);
        whole.InitializeWeights(7);
        for (int s = 0; s < 4; s++)
        {
            var stage = Stage(config, 4, s);
            stage.InitializeWeights(7);
            foreach (var p in stage.Layout.Parameters)
                Assert.Equal(_cpu.ToArray<double>(whole.Layout[p.Name].Value), _cpu.ToArray<double>(p.Value));
        }
    }

    /// <summary>
    /// The seam on one device: the units cut in two ranges, each in its own slot, forward one after the other (the second from a
    /// copy of the first's output, as a receiving stage would hold it) and backward in reverse, give the whole model's loss and
    /// every gradient bit for bit: the same operations in the same order.
    /// </summary>
    [Theory]
    [InlineData("gpt2-debug", 3, false)]
    [InlineData("llama-debug", 1, true)]
    [InlineData("gpt2-debug", 9, true)]
    public void RangesOfUnitsRunForwardAndBackwardInTurnAreTheWholeModel(string preset, int cut, bool recompute)
    {
        var config = Deep(preset);
        var rng = new Random(3);
        var tokens = _cpu.FromArray(Enumerable.Range(0, B * T).Select(_ => rng.Next(config.VocabSize)).ToArray(), B, T);
        var targets = _cpu.FromArray(Enumerable.Range(0, B * T).Select(_ => rng.Next(config.VocabSize)).ToArray(), B, T);
        Model Build()
        {
            var m = new Model(config, _cpu, DType.F64) { RecomputeActivations = recompute };
            LayerCheck.Randomize(_cpu, m.Parameters, new Random(11));
            return m;
        }
        var whole = Build();
        var expectedLosses = _cpu.ToArray<double>(whole.Loss(tokens, targets, 0, 1.0 / (B * T)));
        whole.Backward(0);

        var split = Build();
        int units = split.Layout.Units.Count;
        var middle = split.ForwardUnits(0, cut, 0, tokens, B, T);                      // (N, C)
        var received = _cpu.Zeros(middle.Shape, DType.F64);
        _cpu.Copy(middle, received);
        var losses = _cpu.ToArray<double>(split.LossUnits(cut, units, 1, received, targets, 1.0 / (B * T), B, T));
        var gradient = _cpu.Zeros(middle.Shape, DType.F64);
        split.BackwardUnits(cut, units, 1, gradient, B, T);
        split.BackwardUnits(0, cut, 0, gradient, B, T);

        Assert.Equal(expectedLosses, losses);
        foreach (var p in whole.Layout.Parameters)
            Assert.Equal(_cpu.ToArray<double>(p.Grad), _cpu.ToArray<double>(split.Layout[p.Name].Grad));
    }

    [Fact]
    public void AStageRefusesWholeModelCallsAndMisshapenInputsNamingWhatItHolds()
    {
        var config = Deep("gpt2-debug");
        var middle = Stage(config, 4, 1);
        var tokens = _cpu.FromArray(new int[B * T], B, T);
        var e = Assert.Throws<InvalidOperationException>(() => middle.Forward(tokens));
        Assert.Contains("pipeline stage 1 of 4", e.Message);
        Assert.Contains("blocks.2, blocks.3", e.Message);
        Assert.Throws<InvalidOperationException>(() => middle.CreateKvCache(1));
        e = Assert.Throws<InvalidOperationException>(() => _ = middle.Head);
        Assert.Contains("the LM head is not on this rank", e.Message);
        var wrong = _cpu.Zeros(new Shape(B * T, config.Embedding + 1), DType.F64);
        var a = Assert.Throws<ArgumentException>(() => middle.ForwardUnits(0, 2, 0, wrong, B, T));
        Assert.Contains($"must be contiguous ({B * T}, {config.Embedding}) F64", a.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => middle.ForwardUnits(1, 3, 0, wrong, B, T));

        var groups = InProcessProcessGroup.Create(2, TimeSpan.FromSeconds(5));
        a = Assert.Throws<ArgumentException>(() => new Model(config, _cpu, DType.F64, pipeline: new PipelineParallelism(groups[0], PipelinePartition.Even(4, 2))));
        Assert.Contains("cuts 4 blocks but the model has 8 (Layers)", a.Message);
    }
}
