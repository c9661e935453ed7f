using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Qwen2-MoE's shared expert: y += sigmoid(x w_g) · shared_expert(x) for every row x, w_g the gate (1, C) and shared_expert a
/// SwiGLU C to F_s to C. Every token runs it, so it is one dense <see cref="SwiGluMlp"/> over all N rows, beside the routed
/// experts and independent of their routing (under expert parallelism it runs on the rank's own rows, never dispatched).
/// <para>
/// On the host-routed path the sigmoid is taken on the host, as the routing is: the gate's N logits are read back (one more
/// wait on the device per layer) and the weights g (N) uploaded (the device-routed path hands the logits to
/// <see cref="IBackend.MoeCombine"/>, which takes the sigmoid on the device); the backward reads back dL/dg = dy · shared_expert(x) (N) and uploads
/// dL/dz = dL/dg g (1 - g). The scaling and its input gradient are batched products with K = 1, as the routed experts' weights are.
/// </para>
/// </summary>
public sealed partial class SparseMoeFeedForward
{
    /// <summary>The shared expert's buffers.</summary>
    private sealed class SharedExpertKeys(string name)
    {
        public ActivationKey Output { get; } = new(name + ".shared_expert.y");             // (N, C): shared_expert(x), saved
        public ActivationKey Weights { get; } = new(name + ".shared_expert_gate.sigmoid"); // (N, 1, 1): g = sigmoid(x w_g), saved
        public ActivationKey Dots { get; } = new(name + ".shared_expert_gate.dg");         // (N, 1, 1): dL/dg = dy · shared_expert(x)
        public ActivationKey DLogits { get; } = new(name + ".shared_expert_gate.dy");      // (N, 1): dL/dz = dL/dg g (1 - g)
        public ActivationKey DScaled { get; } = new(name + ".shared_expert.dy");           // (N, 1, C): g dy
    }

    /// <summary>Adds sigmoid(x w_g) · shared_expert(x) into <paramref name="output"/> (N, C) for the rows <paramref name="x"/> (N, C).</summary>
    private void AddSharedExpert(in PassContext ctx, Tensor x, Tensor output)
    {
        var backend = x.Backend;
        int n = x.Size(0), c = x.Size(1);
        var shared = SharedExpert!.Forward(ctx, x);                  // (N, C)
        var logits = SharedExpertGate!.Forward(ctx, x);              // (N, 1)
        var z = Download(ctx, logits);
        var g = new double[n];
        for (int i = 0; i < n; i++) g[i] = Sigmoid(z[i]);
        var weights = ctx.Buffer(_shared.Weights, new Shape(n, 1, 1), x.DType);            // (N, 1, 1)
        Upload(ctx, g, weights);
        backend.MatMul(weights, shared.Reshape(n, 1, c), output.Reshape(n, 1, c), beta: 1.0);   // output += g · shared
        ctx.Save(_shared.Output, shared);
        ctx.Save(_shared.Weights, weights);
    }

    /// <summary>The shared expert's gradients for the output gradient <paramref name="dy"/> (N, C), its input gradient added into
    /// <paramref name="dx"/> (N, C); returns dL/dg = dy · shared_expert(x) (N), this rank's part under tensor parallelism.</summary>
    private double[] BackwardSharedExpert(in PassContext ctx, Tensor dy, Tensor dx)
    {
        var backend = dy.Backend;
        int n = dy.Size(0), c = dy.Size(1);
        var shared = ctx.Get(_shared.Output);                        // (N, C)
        var weights = ctx.Get(_shared.Weights);                      // (N, 1, 1)
        var dy3 = dy.Reshape(n, 1, c);                               // (N, 1, C)
        var dots = ctx.Scratch(_shared.Dots, new Shape(n, 1, 1), dy.DType);                 // (N, 1, 1)
        backend.MatMul(dy3, shared.Reshape(n, 1, c), dots, transposeB: true);
        var dg = Download(ctx, dots);
        var dScaled = ctx.Scratch(_shared.DScaled, new Shape(n, 1, c), dy.DType);           // (N, 1, C): g dy
        backend.MatMul(weights, dy3, dScaled);
        SharedExpert!.Backward(ctx, dScaled.Reshape(n, c), dx, accumulateDx: true);
        return dg;
    }

    /// <summary>The shared expert gate's gradient from dL/dg <paramref name="dg"/> (N, whole); its input gradient added into
    /// <paramref name="dx"/> (N, C) unless null (tensor-parallel ranks other than 0: the replicated gate's input gradient is
    /// added once before the input's reduction).</summary>
    private void BackwardSharedExpertGate(in PassContext ctx, double[] dg, Tensor? dx)
    {
        var weights = ctx.Get(_shared.Weights);                      // (N, 1, 1)
        int n = weights.Size(0);
        var g = Download(ctx, weights);
        var dz = new double[n];
        for (int i = 0; i < n; i++) dz[i] = dg[i] * g[i] * (1 - g[i]);
        var dLogits = ctx.Scratch(_shared.DLogits, new Shape(n, 1), weights.DType);         // (N, 1)
        Upload(ctx, dz, dLogits);
        SharedExpertGate!.Backward(ctx, dLogits, dx, accumulateDx: true);
    }

    /// <summary>The logistic function, written so that neither branch overflows.</summary>
    private static double Sigmoid(double z) => z >= 0 ? 1 / (1 + Math.Exp(-z)) : Math.Exp(z) / (1 + Math.Exp(z));
}
