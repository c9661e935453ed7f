using Tessera.Distributed.InProcess;
using Tessera.Nn.Parallel;
using Xunit;

namespace Tessera.Tests.Nn.Parallel;

/// <summary>Where the pipeline axis cuts the blocks: even splits, balancing the vocabulary layers, and the errors for impossible cuts.</summary>
public sealed class PipelinePartitionTests
{
    private static int[] Counts(PipelinePartition p) => Enumerable.Range(0, p.VirtualStageCount).Select(s => p.BlocksOf(s).Count).ToArray();

    [Fact]
    public void AnEvenSplitGivesExtraBlocksToTheMiddleStagesFirst()
    {
        Assert.Equal([2, 2, 2, 2], Counts(PipelinePartition.Even(8, 4)));
        Assert.Equal([2, 3, 3, 2], Counts(PipelinePartition.Even(10, 4)));
        Assert.Equal([2, 3, 3, 3], Counts(PipelinePartition.Even(11, 4)));
        Assert.Equal([1, 2, 1, 1, 1, 1, 1, 1], Counts(PipelinePartition.Even(9, 4, 2)));
        var p = PipelinePartition.Even(8, 4, 2);
        Assert.Equal(8, p.VirtualStageCount);
        // Virtual stage s runs on rank s mod p as its chunk s / p.
        Assert.Equal((3, 1), (p.StageOf(7), p.ChunkOf(7)));
        Assert.Equal(5, p.VirtualStage(1, 1));
        Assert.Equal((5, 1), p.BlocksOf(5));
        Assert.Equal("pp 4 x v 2: blocks 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7", p.ToString());
    }

    /// <summary>
    /// With the vocabulary layers costed, the greedy split's costliest virtual stage costs exactly the optimum found by trying
    /// every split of the blocks into contiguous stages of at least one block (the blocks cost the same, so counts are all that
    /// matter); heavy vocabulary layers leave the first and last stages fewer blocks.
    /// </summary>
    [Theory]
    [InlineData(12, 4, 1, 1.5, 1.0, 3.0)]
    [InlineData(10, 3, 1, 0.2, 1.0, 4.5)]
    [InlineData(16, 2, 2, 2.0, 1.0, 2.0)]
    [InlineData(7, 7, 1, 5.0, 1.0, 5.0)]
    public void BalancingMinimizesTheCostliestVirtualStage(int layers, int stages, int chunks, double embedding, double block, double head)
    {
        var costs = new PipelineUnitCosts(embedding, block, head);
        var partition = PipelinePartition.Balanced(layers, stages, chunks, costs);
        Assert.Equal(layers, Counts(partition).Sum());
        double best = double.MaxValue;
        int k = stages * chunks;
        void Search(int stage, int left, double worst)
        {
            if (stage == k - 1)
            {
                double cost = left * block + (k == 1 ? embedding : 0) + head;
                best = Math.Min(best, Math.Max(worst, cost));
                return;
            }
            for (int n = 1; n <= left - (k - 1 - stage); n++)
                Search(stage + 1, left - n, Math.Max(worst, n * block + (stage == 0 ? embedding : 0)));
        }
        Search(0, layers, 0);
        Assert.Equal(best, partition.CostsOf(costs).Max(), 12);
    }

    [Fact]
    public void HeavyVocabularyLayersLeaveTheFirstAndLastStagesFewerBlocks()
    {
        // Costs 2 + 7 | 10 | 10 | 5 + 4: every stage at most 10, the least any split of 32 blocks plus 6 can do over 4 stages.
        Assert.Equal([7, 10, 10, 5], Counts(PipelinePartition.Balanced(32, 4, 1, new PipelineUnitCosts(Embedding: 2, Block: 1, Head: 4))));
    }

    [Fact]
    public void ImpossibleCutsAreRefusedNamingTheNumbers()
    {
        var e = Assert.Throws<ArgumentException>(() => PipelinePartition.Even(2, 4));
        Assert.Contains("pp (4) stages need at least one block each, but the model has 2 blocks (Layers)", e.Message);
        e = Assert.Throws<ArgumentException>(() => PipelinePartition.Even(8, 4, 3));
        Assert.Contains("pp (4) x virtual stages (3) = 12 virtual stages need at least one block each, but the model has 8 blocks (Layers)", e.Message);
        e = Assert.Throws<ArgumentException>(() => new PipelinePartition(2, [3, 0]));
        Assert.Contains("virtual stage 1 is given 0 blocks", e.Message);
        e = Assert.Throws<ArgumentException>(() => new PipelinePartition(2, [3, 2, 1]));
        Assert.Contains("3 block counts do not give each of the pp (2) stages the same number", e.Message);
        e = Assert.Throws<ArgumentException>(() => PipelinePartition.Balanced(8, 2, 1, new PipelineUnitCosts(Block: 0)));
        Assert.Contains("Block (0) must be positive", e.Message);
        var groups = InProcessProcessGroup.Create(3, TimeSpan.FromSeconds(5));
        e = Assert.Throws<ArgumentException>(() => new PipelineParallelism(groups[0], PipelinePartition.Even(8, 2)));
        Assert.Contains("has 3 ranks but the partition (pp 2: blocks 0-3 | 4-7) has 2 stages", e.Message);
    }
}
