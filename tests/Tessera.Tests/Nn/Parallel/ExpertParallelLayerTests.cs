using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Distributed;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Nn.Parallel;

/// <summary>
/// <see cref="SparseMoeFeedForward"/> with expert parallelism (the all-to-all token dispatcher) on in-process thread ranks, in
/// F64, against the one-device layer run on each rank's tokens: outputs, input gradients, the router's gradient per rank, and
/// each expert's gradient on its holder equal to the sum of the one-device gradients over the ranks' batches.
/// </summary>
public sealed class ExpertParallelLayerTests(ITestOutputHelper output)
{
    private const int N = 10, C = 8, F = 6, E = 4;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    /// <summary>What one rank's batch gives: y, dx, and every parameter's gradient by name.</summary>
    private sealed record Pass(double[] Y, double[] Dx, Dictionary<string, double[]> Grads, double Aux);

    private static Pass Run(SparseMoeFeedForward moe, ParameterArena arena, IBackend cpu, double[] x, double[] dy)
    {
        var ctx = PassContext.Training(new ActivationStore(cpu), 0);
        arena.ZeroGrad();
        var y = TestTensors.ToDoubles(cpu, moe.Forward(ctx, TestTensors.FromDoubles(cpu, x, DType.F64, N, C)));
        var dx = TestTensors.FromDoubles(cpu, new double[N * C], DType.F64, N, C);
        TestTensors.Poison(cpu, dx);                                  // "=" semantics: every element written
        moe.Backward(ctx, TestTensors.FromDoubles(cpu, dy, DType.F64, N, C), dx);
        return new Pass(y, TestTensors.ToDoubles(cpu, dx), arena.Layout.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(cpu, p.Grad)), moe.LastAuxiliaryLoss);
    }

    /// <summary>
    /// Runs <paramref name="ranks"/> ranks of ep, each with its own tokens, against the one-device layer; <paramref name="weights"/>
    /// sets the one-device layer's weights (random, or arranged), <paramref name="tokens"/> makes rank r's x.
    /// </summary>
    private void AssertExpertParallelMatchesOneDevice(int ranks, int k, bool normalize, double coefficient, int seed,
        Action<IBackend, ParameterArena, Random> weights, Func<Random, double[]> tokens, int[]? idleExperts = null, int sharedExpertHidden = 0)
    {
        output.WriteLine($"seed {seed}");
        var cpu = new CpuBackend(1);
        var rng = new Random(seed);
        var parameters = new ParameterLayoutBuilder();
        var single = new SparseMoeFeedForward(new LayerFactory(parameters), "moe", C, F, E, k, normalize, coefficient, sharedExpertHidden) { AuxiliaryLossWeight = 0.7 };
        var singleArena = new ParameterArena(parameters.Build(), cpu, DType.F64);
        weights(cpu, singleArena, rng);
        var values = singleArena.Layout.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(cpu, p.Value));
        var xs = Enumerable.Range(0, ranks).Select(_ => tokens(rng)).ToArray();
        var dys = Enumerable.Range(0, ranks).Select(_ => TestTensors.Normal(rng, N * C)).ToArray();
        var expected = Enumerable.Range(0, ranks).Select(r => Run(single, singleArena, cpu, xs[r], dys[r])).ToArray();

        var groups = InProcessProcessGroup.Create(ranks, Timeout);
        var got = new Pass[ranks];
        var counts = new long[ranks];
        RankThreads.Run(ranks, r =>
        {
            var backend = new CpuBackend(1);
            var local = new ParameterLayoutBuilder();
            var factory = new LayerFactory(local, expertParallelism: new ExpertParallelism(groups[r]));
            var moe = new SparseMoeFeedForward(factory, "moe", C, F, E, k, normalize, coefficient, sharedExpertHidden) { AuxiliaryLossWeight = 0.7 };
            var arena = new ParameterArena(local.Build(), backend, DType.F64);
            foreach (var p in arena.Layout.Parameters) TestTensors.Write(backend, p.Value, values[p.Name]);
            Assert.Equal(E / ranks, moe.Experts.Count);
            Assert.Equal(3 * E / ranks, factory.ExpertParameters.Count);       // gate, up and proj of each held expert
            Assert.DoesNotContain(factory.ExpertParameters, name => name.Contains("shared_expert", StringComparison.Ordinal));
            got[r] = Run(moe, arena, backend, xs[r], dys[r]);
            counts[r] = groups[r].Count(CollectiveKind.AllToAll);
        });

        // The same products over other row sets and sums in another order (an expert's rows from every rank in one product,
        // its gradient summed over them at once): ~1e-16 relative per operation; 1e-12 fails for a row sent to the wrong
        // expert or returned to the wrong token, which moves values by O(0.1).
        for (int r = 0; r < ranks; r++)
        {
            Assert.Equal(5, counts[r]);                                  // counts, rows, results forward; two exchanges backward
            NumericAssert.Close(expected[r].Y, got[r].Y, 1e-12, $"rank {r} output (seed {seed})");
            NumericAssert.Close(expected[r].Dx, got[r].Dx, 1e-12, $"rank {r} dx (seed {seed})");
            NumericAssert.Close(expected[r].Grads["moe.router.weight"], got[r].Grads["moe.router.weight"], 1e-12, $"rank {r} router gradient (seed {seed})");
            Assert.Equal(expected[r].Aux, got[r].Aux);                  // routing is each rank's own, decided as on one device
            foreach (var (name, grad) in got[r].Grads)
            {
                // The shared expert and its gate are replicated: each rank's gradient is the one device's on that rank's tokens
                // (data parallelism then sums it over every rank, as it does the router's).
                if (name.Contains("shared_expert", StringComparison.Ordinal))
                    NumericAssert.Close(expected[r].Grads[name], grad, 1e-12, $"rank {r} {name} (seed {seed})");
                if (!name.Contains(".experts.", StringComparison.Ordinal)) continue;
                var sum = new double[grad.Length];
                foreach (var pass in expected) for (int i = 0; i < sum.Length; i++) sum[i] += pass.Grads[name][i];
                NumericAssert.Close(sum, grad, 1e-12, $"rank {r} {name} (seed {seed})");
                if (idleExperts is not null && idleExperts.Any(e => name.StartsWith($"moe.experts.{e}.", StringComparison.Ordinal)))
                    Assert.All(grad, g => Assert.Equal(0.0, g));           // no token anywhere chose it
            }
        }
    }

    [Theory]
    [InlineData(2, 2, true, 0.0, 5101)]
    [InlineData(2, 2, false, 0.3, 5102)]    // the load-balancing loss: each rank's own tokens, as on one device
    [InlineData(4, 2, true, 0.3, 5103)]     // one expert a rank
    [InlineData(4, 1, false, 0.0, 5104)]
    public void ExpertParallelRanksMatchTheOneDeviceLayerOnEachRanksTokens(int ranks, int k, bool normalize, double coefficient, int seed) =>
        AssertExpertParallelMatchesOneDevice(ranks, k, normalize, coefficient, seed, (cpu, arena, rng) => LayerCheck.Randomize(cpu, arena, rng),
            rng => TestTensors.Normal(rng, N * C));

    [Theory]
    [InlineData(2, 5111)]
    [InlineData(4, 5112)]
    public void ASharedExpertRunsOnEachRanksOwnRowsAndStaysReplicated(int ranks, int seed) =>
        AssertExpertParallelMatchesOneDevice(ranks, 2, false, 0.3, seed, (cpu, arena, rng) => LayerCheck.Randomize(cpu, arena, rng),
            rng => TestTensors.Normal(rng, N * C), sharedExpertHidden: 5);

    [Fact]
    public void ARankWhoseExpertsReceiveNoTokensStillJoinsEveryExchange()
    {
        // Positive tokens and router rows positive for experts 0 and 1 (rank 0's), negative for 2 and 3 (rank 1's): every token's
        // top two are 0 and 1, so rank 1 receives no rows, sends everything to rank 0, and its experts get no gradient.
        AssertExpertParallelMatchesOneDevice(2, 2, true, 0.3, 5201, (cpu, arena, rng) =>
        {
            LayerCheck.Randomize(cpu, arena, rng);
            var router = arena.Layout["moe.router.weight"];
            var w = TestTensors.ToDoubles(cpu, router.Value);
            for (int e = 0; e < E; e++)
                for (int c = 0; c < C; c++) w[e * C + c] = (e < 2 ? 1 : -1) * (0.1 + Math.Abs(w[e * C + c]));
            TestTensors.Write(cpu, router.Value, w);
        }, rng => TestTensors.Normal(rng, N * C).Select(v => 0.1 + Math.Abs(v)).ToArray(), idleExperts: [2, 3]);
    }

    [Fact]
    public void ExpertsThatEpDoesNotDivideAreRefused()
    {
        var group = InProcessProcessGroup.Create(3, Timeout)[0];
        var e = Assert.Throws<ArgumentException>(() =>
            new SparseMoeFeedForward(new LayerFactory(new ParameterLayoutBuilder(), expertParallelism: new ExpertParallelism(group)), "moe", C, F, E, 2, true));
        Assert.Contains("ep (3) must divide the experts (4)", e.Message);
    }
}
