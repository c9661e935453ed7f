using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Xunit;

namespace Tessera.Tests.Inference.Speculation;

/// <summary>
/// The scheduler and the draft model's pool under a sliding window (served window 12, blocks of 4, chunks of 8): a block
/// goes back to the pool only once both models are past it, the draft model's <see cref="ModelDrafter.CatchUp"/> keeps its
/// pool at the served one's pace so that the window's release goes on, and the bound on the blocks a sequence holds is the
/// pair's.
/// </summary>
public class ModelDrafterWindowTests
{
    private const int Window = 12, BlockSize = 4, Budget = 8, Context = 96;
    private readonly CpuBackend _cpu = new(1);

    private Transformer Model(int seed, int window, int layers = 0)
    {
        var config = ModelPresets.Get("mistral-debug") with { VocabSize = 256, MaxSequenceLength = Context, SlidingWindow = window };
        if (layers > 0) config = config with { Layers = layers };
        var model = new Transformer(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));
        return model;
    }

    private PagedKvCache Cache(Transformer model, int blocks) =>
        new(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, new PagedKvCacheOptions
        {
            BlockSize = BlockSize,
            MemoryBytes = blocks * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, BlockSize),
        });

    /// <summary>The bound of the pair: the larger window, every block when either model has none, and a step's reach
    /// that includes the guesses reserved ahead (2 x lookahead + 1 past the known tokens) when they exceed the budget.</summary>
    [Fact]
    public void BlocksHeldIsThePairsBound()
    {
        Assert.Equal(6, Scheduler.BlocksHeld(80, BlockSize, Window, Budget, null));                                     // (12 + 8 + 5) / 4
        Assert.Equal(6, Scheduler.BlocksHeld(80, BlockSize, Window, Budget, new DraftModelPool { SlidingWindow = 8, LookaheadTokens = 3 }));
        Assert.Equal(8, Scheduler.BlocksHeld(80, BlockSize, Window, Budget, new DraftModelPool { SlidingWindow = 20, LookaheadTokens = 3 }));   // (20 + 8 + 5) / 4
        Assert.Equal(20, Scheduler.BlocksHeld(80, BlockSize, Window, Budget, new DraftModelPool { SlidingWindow = 0, LookaheadTokens = 3 }));   // all 80 positions
        Assert.Equal(8, Scheduler.BlocksHeld(80, BlockSize, Window, Budget, new DraftModelPool { SlidingWindow = 8, LookaheadTokens = 8 }));    // (12 + 17 + 5) / 4
        Assert.Equal(20, Scheduler.BlocksHeld(80, BlockSize, 0, Budget, new DraftModelPool { SlidingWindow = 8, LookaheadTokens = 3 }));        // the served model reads all
        Assert.Throws<ArgumentException>(() => new DraftModelPool { SlidingWindow = -1 }.Validate());
    }

    /// <summary>
    /// A 40-token prompt prefilled in five chunks of 8. Without the draft model catching up on the steps, its pool still needs
    /// every position from 0, so no block is released though the served window left blocks 0-6 behind; with
    /// <see cref="ModelDrafter.CatchUp"/> before each step its pool holds what the served one holds, and the blocks left of
    /// the pair's window (draft window 8, served 12) go back, the sequence never holding more than the pair's bound. A
    /// draft model without a window keeps every block.
    /// </summary>
    [Theory]
    [InlineData(8, true, 7)]
    [InlineData(8, false, 0)]
    [InlineData(0, true, 0)]
    public void ABlockIsReleasedOnlyOnceTheDraftPoolIsPastIt(int draftWindow, bool catchUp, int released)
    {
        var served = Model(41, Window);
        var draft = Model(42, draftWindow, layers: 1);
        using var cache = Cache(served, 24);
        var pool = new DraftModelPool { SlidingWindow = draftWindow, LookaheadTokens = 3 };
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 1, TokenBudget = Budget }, Window, pool);
        using var runner = new PagedModelRunner(served, cache, Budget, 1, Context, recordGraphs: false, maxDrafts: 3);
        using var drafter = new ModelDrafter(draft, served, cache, Budget, 1, Context, recordGraphs: false);
        var rng = new Random(40);
        var sequence = new Sequence(0, Enumerable.Range(0, 40).Select(_ => rng.Next(1, 250)).ToArray(), 60) { MaxDrafts = 3 };
        scheduler.Add(sequence);
        int peakHeld = 0;
        for (int chunk = 0; chunk < 5; chunk++)
        {
            var step = scheduler.Schedule();
            Assert.Equal((chunk * Budget, Budget), (step.Sequences.Single().Start, step.Sequences.Single().Count));
            if (catchUp) drafter.CatchUp(step);
            Assert.Equal(catchUp ? (chunk + 1) * Budget : 0, sequence.DraftModelTokens);
            runner.Run(step, withLogits: false, out _, out _);
            scheduler.Complete(step);
            peakHeld = Math.Max(peakHeld, sequence.HeldBlocks);
        }
        Assert.Equal(40, sequence.ComputedTokens);
        Assert.Equal(released, sequence.BlockTable.Count(b => b == -1));   // (40 - 12 + 1) / 4 = 7 blocks left of the window
        Assert.Equal(10 - released, sequence.HeldBlocks);
        if (released > 0) Assert.True(peakHeld <= scheduler.BlocksHeld(60), $"held {peakHeld} blocks, above the bound {scheduler.BlocksHeld(60)}");
        scheduler.Finish(sequence);
        Assert.Equal(0, cache.Allocator.InUse);
    }
}
