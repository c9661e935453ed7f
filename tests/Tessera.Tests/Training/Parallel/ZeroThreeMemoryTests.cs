using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// What a ZeRO-3 rank holds. With P arena elements, W ranks, b bytes per element and S_max the largest segment
/// (padded to W x 64 elements, in bytes: max over segments of Chunk * W * b), the bound is
/// <code>
///   persistent  = value shard + gradient shard (+ F32 master shard for BF16) = ShardLength * (2b [+ 4]),
///                 ShardLength &lt;= P / W + 64 per segment (each segment is padded to a multiple of W x 64);
///   transient   &lt;= 3 S_max gathered values (current, prefetched, kept tied embeddings or head)
///                + 3 S_max gradient buffers (current, previous in flight, tied embeddings)
///                + 2 chunks when micro-batches accumulate;
///   arena       = 0 (the full-size value, gradient and master buffers are freed).
/// </code>
/// Measured from the tensors themselves: the arena's and the communication's buffers (Storage.ByteLength of every
/// buffer each holds, pooled or in use), and, independently, the distinct storages that the parameters' Value and Grad
/// views point into at every hook of a training step (at most 3 of each, none larger than S_max). A full-size buffer
/// left anywhere, a segment not released or a gradient buffer kept across segments breaks one of them.
/// </summary>
public sealed class ZeroThreeMemoryTests : IDisposable
{
    private const int World = 4;
    private readonly TemporaryRunFolder _run = new("tessera-zero3-memory-");

    public void Dispose() => _run.Dispose();

    /// <summary>gpt2-debug with 16 blocks (tied embeddings), so that a block is a small part of the model (Llama 8B has 32).</summary>
    private static TransformerConfig Config => ModelPresets.Get("gpt2-debug") with { Layers = 16 };

    /// <summary>Wraps the communication's hooks and records, after each Before* hook, the storages the parameters are bound to.</summary>
    private sealed class BindingProbe(ITransformerPassHooks inner, IReadOnlyList<Parameter> parameters) : ITransformerPassHooks
    {
        public int MaxValueBuffers { get; private set; }
        public int MaxGradientBuffers { get; private set; }
        public long LargestBoundBuffer { get; private set; }
        public long MaxBoundBytes { get; private set; }

        public void BeforeForward(int segment) { inner.BeforeForward(segment); Record(); }
        public void AfterForward(int segment) => inner.AfterForward(segment);
        public void BeforeBackward(int segment) { inner.BeforeBackward(segment); Record(); }
        public void AfterBackward(int segment) => inner.AfterBackward(segment);

        private void Record()
        {
            var values = parameters.Where(p => p.IsResident).Select(p => p.Value.Storage).Distinct().ToList();
            var grads = parameters.Where(p => p.HasGradient).Select(p => p.Grad.Storage).Distinct().ToList();
            MaxValueBuffers = Math.Max(MaxValueBuffers, values.Count);
            MaxGradientBuffers = Math.Max(MaxGradientBuffers, grads.Count);
            foreach (var s in values.Concat(grads)) LargestBoundBuffer = Math.Max(LargestBoundBuffer, s.ByteLength);
            MaxBoundBytes = Math.Max(MaxBoundBytes, values.Concat(grads).Sum(s => s.ByteLength));
        }
    }

    private sealed record RankMemory(long Arena, long Persistent, long Transient, long ShardLength, long SegmentMax, long ChunkMax,
        int ValueBuffers, int GradientBuffers, long LargestBound, long BoundBytes, bool UnboundAfterStep);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void ZeroThreeRankHoldsItsShardsAndAFewSegments(int accumulation)
    {
        var config = Config;
        long length = new Transformer(config, new Tessera.Tensors.Cpu.CpuBackend(1), DType.F64).Parameters.Length;
        const int b = sizeof(double);
        var ranks = ParallelTraining.RunThreadRanks(World, ctx =>
        {
            var model = new Transformer(config, ctx.Backend, DType.F64);
            model.InitializeWeights(ParallelRun.Seed);
            var arena = model.Parameters;
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, World),
                ParallelRun.Options(3, accumulation), new AdamWOptions(), new DataParallelOptions { Stage = ZeroStage.Parameters }, ctx.Host);
            var communication = trainer.FullySharded();
            var probe = new BindingProbe(model.PassHooks!, model.Layout.Parameters);
            model.PassHooks = probe;
            for (int s = 0; s < 2; s++) Assert.True(double.IsFinite(trainer.TrainStep()));
            var layout = communication.Layout;
            bool unbound = model.Layout.Parameters.All(p => !p.IsResident && !p.HasGradient);
            return new RankMemory(arena.AllocatedBytes, communication.PersistentBytes, communication.TransientBytes, layout.ShardLength,
                layout.Units.Max(u => u.Chunk * layout.Shards) * b, layout.Units.Max(u => u.Chunk) * b,
                probe.MaxValueBuffers, probe.MaxGradientBuffers, probe.LargestBoundBuffer, probe.MaxBoundBytes, unbound);
        }, TimeSpan.FromSeconds(60));

        long full = 2 * length * b;   // what every rank held before: the full value and gradient arenas
        foreach (var (m, rank) in ranks.Select((m, r) => (m, r)))
        {
            string where = $"rank {rank} of {World} (P = {length}, accumulation {accumulation})";
            TestContext.Current.TestOutputHelper?.WriteLine(
                $"{where}: arena {m.Arena} B, persistent {m.Persistent} B (shard {m.ShardLength} elements), transient {m.Transient} B " +
                $"(largest segment {m.SegmentMax} B), total {m.Persistent + m.Transient} B of the {full} B full arenas; " +
                $"bound at once: {m.ValueBuffers} value and {m.GradientBuffers} gradient buffers, {m.BoundBytes} B");
            Assert.Equal(0, m.Arena);
            Assert.Equal(2 * m.ShardLength * b, m.Persistent);
            Assert.True(m.ShardLength <= length / World + 64 * (config.Layers + 2), $"{where}: shard of {m.ShardLength} elements exceeds P/W + 64 per segment");
            long transientBound = 6 * m.SegmentMax + (accumulation > 1 ? 2 * m.ChunkMax : 0);
            Assert.True(m.Transient <= transientBound, $"{where}: transient {m.Transient} B exceeds 6 segments (+ 2 chunks) = {transientBound} B");
            Assert.True(m.Persistent + m.Transient < full / 2, $"{where}: {m.Persistent + m.Transient} B is not below half the full arenas ({full} B)");
            Assert.InRange(m.ValueBuffers, 1, 3);
            Assert.InRange(m.GradientBuffers, 0, 3);
            Assert.True(m.LargestBound <= m.SegmentMax, $"{where}: a parameter is bound to a {m.LargestBound} B buffer, larger than any segment ({m.SegmentMax} B)");
            Assert.True(m.BoundBytes <= m.Transient, $"{where}: {m.BoundBytes} B bound at once, more than the communication holds ({m.Transient} B)");
            Assert.True(m.UnboundAfterStep, $"{where}: parameters stay bound after the step");
        }
    }

    private sealed record SetupPeak(long AfterModel, long AfterSetup, long AfterSteps, long Persistent, long Moments, long Transient,
        long Activations, long SegmentMax);

    /// <summary>
    /// Trains 3 steps on <paramref name="world"/> thread ranks and reads each rank's <see cref="CpuBackend.PeakAllocatedBytes"/>
    /// (every storage the rank's device backend allocated, counted at allocation and freed at disposal) after building the
    /// model, after the trainer's setup (and the weights' initialization), and after the steps.
    /// </summary>
    private SetupPeak[] MeasurePeaks(int world, bool shardedConstruction) => ParallelTraining.RunThreadRanks(world, ctx =>
    {
        var backend = (CpuBackend)ctx.Backend;
        Assert.Equal(0, backend.AllocatedBytes);
        Transformer model;
        if (shardedConstruction) model = new Transformer(Config, backend, DType.F64, ArenaStorage.Deferred);
        else
        {
            model = new Transformer(Config, backend, DType.F64);
            model.InitializeWeights(ParallelRun.Seed);
        }
        // Activation checkpointing, as ZeRO-3 runs use: a tiny model's activations of 16 blocks would otherwise outweigh its parameters.
        model.RecomputeActivations = true;
        long afterModel = backend.PeakAllocatedBytes;
        var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, world),
            ParallelRun.Options(3), new AdamWOptions(), new DataParallelOptions { Stage = ZeroStage.Parameters }, ctx.Host);
        if (shardedConstruction) trainer.InitializeWeights(ParallelRun.Seed);
        long afterSetup = backend.PeakAllocatedBytes;
        for (int s = 0; s < 3; s++) Assert.True(double.IsFinite(trainer.TrainStep()));
        var layout = trainer.Strategy().Layout;
        return new SetupPeak(afterModel, afterSetup, backend.PeakAllocatedBytes, trainer.FullySharded().PersistentBytes,
            trainer.Strategy().Optimizer.M.Storage.ByteLength + trainer.Strategy().Optimizer.V.Storage.ByteLength, trainer.Strategy().TransientBytes,
            model.Activations.BufferedElements * sizeof(double), layout.Units.Max(u => u.Chunk * layout.Shards) * sizeof(double));
    }, TimeSpan.FromSeconds(120));

    [Fact]
    public void ShardedConstructionNeverAllocatesTheFullArenaOnARank()
    {
        // 8 ranks, F64, no offload, activation checkpointing. Bounds on what a rank's backend ever holds (P arena elements,
        // full = the value and gradient arenas, 2 x P x 8 B, which construct-then-shard allocates on every rank):
        //   after building the model: 0 (the arena is only declared);
        //   after setup (trainer + initialization): the value and gradient shards + the AdamW moments (4 x ShardLength x 8 B)
        //     + 1 KiB for the trainer's token buffers and scalars (144 B measured); at 8 ranks that is about full / 4,
        //     asserted below full / 3;
        //   after 3 steps: the above + 6 largest segments (the transient pool's bound, see above) + the activation buffers
        //     (every element counted at 8 B) + 1 largest segment (the backend's own scratch: contiguous copies of
        //     matrix-product operands), and below 0.6 x full (measured about half: at this size the 6 pooled segments are
        //     a third of the arenas).
        // The construct-then-shard run is measured too: it must reach the full arenas (so the counter sees full-size
        // buffers) and break the after-steps bound (so the bound tells the two apart).
        const int world = 8;
        long length = new Transformer(Config, new CpuBackend(1), DType.F64).Parameters.Length;
        long full = 2 * length * sizeof(double);
        var sharded = MeasurePeaks(world, shardedConstruction: true);
        var old = MeasurePeaks(world, shardedConstruction: false);
        for (int rank = 0; rank < world; rank++)
        {
            var (m, o) = (sharded[rank], old[rank]);
            string where = $"rank {rank} of {world} (P = {length}, full value + gradient arenas {full} B)";
            TestContext.Current.TestOutputHelper?.WriteLine(
                $"{where}: sharded construction peaks at {m.AfterModel} B after the model, {m.AfterSetup} B after setup, {m.AfterSteps} B after 3 steps " +
                $"(shards {m.Persistent} B, moments {m.Moments} B, transient {m.Transient} B, activations <= {m.Activations} B); " +
                $"construct-then-shard: {o.AfterModel} B, {o.AfterSetup} B, {o.AfterSteps} B");
            Assert.Equal(0, m.AfterModel);
            long setupBound = m.Persistent + m.Moments + 1024;
            Assert.True(m.AfterSetup <= setupBound, $"{where}: setup peaked at {m.AfterSetup} B, above the shards and moments + 1 KiB ({setupBound} B)");
            Assert.True(m.AfterSetup < full / 3, $"{where}: setup peaked at {m.AfterSetup} B, not below a third of the full arenas ({full / 3} B)");
            long bound = m.Persistent + m.Moments + 7 * m.SegmentMax + m.Activations;
            Assert.True(m.AfterSteps <= bound, $"{where}: sharded construction peaked at {m.AfterSteps} B, above the bound {bound} B");
            Assert.True(m.AfterSteps < full * 6 / 10, $"{where}: sharded construction peaked at {m.AfterSteps} B, not below 0.6 x the full arenas ({full * 6 / 10} B)");
            Assert.True(o.AfterModel >= full, $"{where}: construct-then-shard peaked at {o.AfterModel} B after the model, below the full arenas: the counter misses buffers");
            Assert.True(o.AfterSteps > bound, $"{where}: construct-then-shard ({o.AfterSteps} B) fits the bound {bound} B, so the bound does not tell the two apart");
        }
    }

    [Fact]
    public void ReleasedParametersRefuseToBeRead()
    {
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = new Transformer(Config, ctx.Backend, DType.F64);
            model.InitializeWeights(ParallelRun.Seed);
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, 2),
                ParallelRun.Options(3), new AdamWOptions(), new DataParallelOptions { Stage = ZeroStage.Parameters }, ctx.Host);
            var weight = model.Layout["blocks.3.attn.qkv.weight"];
            var e = Assert.Throws<InvalidOperationException>(() => weight.Value);
            Assert.Contains("blocks.3.attn.qkv.weight", e.Message);
            Assert.Throws<InvalidOperationException>(() => weight.Grad);
            Assert.Throws<InvalidOperationException>(() => model.Parameters.Values);
            Assert.Throws<InvalidOperationException>(() => new AdamWOptimizer(model.Parameters, new AdamWOptions()));
            trainer.TrainStep();
            Assert.False(weight.IsResident);
            return 0;
        }, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void Bf16ZeroThreeRankKeepsF32MastersOnlyForItsShard()
    {
        // The CPU backend cannot train in BF16, but the shards are laid out at construction: BF16 value and gradient
        // shards and an F32 master shard (2 + 2 + 4 bytes per shard element), or no master shard when offloaded.
        foreach (bool offload in new[] { false, true })
        {
            ParallelTraining.RunThreadRanks(World, ctx =>
            {
                var model = new Transformer(Config, ctx.Backend, DType.BF16);
                model.InitializeWeights(ParallelRun.Seed);
                var arena = model.Parameters;
                var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, World),
                    ParallelRun.Options(3), new AdamWOptions(), new DataParallelOptions { Stage = ZeroStage.Parameters, OffloadOptimizer = offload }, ctx.Host);
                var layout = trainer.Strategy().Layout;
                Assert.Equal(0, arena.AllocatedBytes);
                Assert.Equal(layout.ShardLength * (2 + 2 + (offload ? 0 : 4)), trainer.FullySharded().PersistentBytes);
                Assert.Equal(offload, trainer.FullySharded().MasterShard is null);
                return 0;
            }, TimeSpan.FromSeconds(60));
        }
    }
}
