using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// A sparse mixture-of-experts feed-forward (Mixtral, Qwen3-MoE): a router C to E without bias, the softmax of its logits,
/// each token's k experts of highest probability (<see cref="ExpertRouting"/>), and y = Σ_s w_s expert_s(x) over them, each
/// expert a <see cref="SwiGluMlp"/> (gate and up C to F', proj F' to C).
/// <para>
/// Routing is decided on the host: each forward reads the router's logits (N, E) back (one synchronization of the device
/// per layer), chooses the experts in F64, and uploads each expert's token ids (n_e) and weights (n_e); the backward reads
/// the logits again and each expert's n_e weight gradients. So a CUDA step waits on the host once per layer (and once per
/// expert with tokens in the backward), which also keeps it out of recorded CUDA graphs. The experts run on the device:
/// each gathers its tokens' rows (<see cref="IBackend.EmbeddingForward"/>, a row gather by ids), runs its SwiGLU on that
/// contiguous block, scales the rows by their weights (a batched product with K = 1) and scatter-adds them into the output
/// (<see cref="IBackend.EmbeddingBackward"/>). An expert no token chose is skipped: its gradients get nothing. There is no
/// grouped product over the experts. Inference's decode-size steps route on the device instead
/// (SparseMoeFeedForward.DeviceRouted.cs: no read-back, recordable as CUDA graphs).
/// Under tensor parallelism (SparseMoeFeedForward.TensorParallel.cs) each rank holds a slice F' / tp of every expert's hidden
/// units and routes identically; one reduction after the combine sums the ranks' partial outputs.
/// With expert parallelism (a <see cref="LayerFactory"/> given an <see cref="Parallel.ExpertParallelism"/>) the layer holds E / ep
/// experts and exchanges token rows with the other ranks by all-to-all (SparseMoeFeedForward.ExpertParallel.cs).
/// </para>
/// <para>
/// Qwen2-MoE adds a shared expert (<see cref="SharedExpert"/>, SparseMoeFeedForward.SharedExpert.cs): a SwiGLU every token runs,
/// its output scaled by sigmoid(<see cref="SharedExpertGate"/>(x)) and added to the routed experts' sum.
/// </para>
/// <para>
/// The load-balancing loss (<see cref="AuxiliaryLossCoefficient"/> &gt; 0) is this layer's own: forward records it
/// (<see cref="LastAuxiliaryLoss"/>), backward adds <see cref="AuxiliaryLossWeight"/> times its gradient to the router's.
/// </para>
/// </summary>
public sealed partial class SparseMoeFeedForward : IFeedForward
{
    private readonly ActivationKey _logits, _hostStaging, _dLogits, _dots, _output, _partialOutput, _dOutputGathered, _tensorParallelDots;
    private readonly ActivationKey[] _ids, _weights, _rows, _expertOut, _scaled, _dRows, _dScaled, _dExpertIn, _localIds;
    private readonly ExpertDispatchKeys _dispatch;
    private readonly SharedExpertKeys _shared;
    private readonly DeviceRoutingKeys _deviceKeys;
    private readonly Adapters.MultiLoraBatch? _servedAdapters;     // when an expert, the shared expert or the router serves adapters

    /// <summary>
    /// Declares "<paramref name="name"/>.router" (E, C) and, for each expert j, "<paramref name="name"/>.experts.{j}.gate"
    /// (F', C), ".up" (F', C) and ".proj" (C, F'), none with biases; with <paramref name="sharedExpertHidden"/> F_s &gt; 0 also
    /// "<paramref name="name"/>.shared_expert.gate" (F_s, C), ".up" (F_s, C), ".proj" (C, F_s) and, when
    /// <paramref name="sharedExpertGated"/>, "<paramref name="name"/>.shared_expert_gate" (1, C), replicated on every rank.
    /// </summary>
    public SparseMoeFeedForward(LayerFactory layers, string name, int channels, int expertHidden, int experts, int expertsPerToken,
        bool normalizeWeights, double auxiliaryLossCoefficient = 0, int sharedExpertHidden = 0, bool sharedExpertGated = true)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (experts < 1 || expertsPerToken < 1 || expertsPerToken > experts)
            throw new ArgumentException($"{name}: experts per token ({expertsPerToken}) must be in [1, experts = {experts}]");
        if (!(auxiliaryLossCoefficient >= 0))
            throw new ArgumentException($"{name}: the auxiliary loss coefficient ({auxiliaryLossCoefficient}) must be 0 or more");
        if (sharedExpertHidden < 0)
            throw new ArgumentException($"{name}: the shared expert's width ({sharedExpertHidden}) must be 0 (none) or positive");
        if (sharedExpertHidden > 0 && !sharedExpertGated)
            throw new NotSupportedException($"{name}: an ungated shared expert (DeepSeek-MoE's) is not built; Qwen2-MoE's shared expert is sigmoid-gated");
        Name = name;
        ExpertParallelism = layers.ExpertParallelism;
        TensorParallelism = layers.TensorParallelism;
        if (TensorParallelism is not null) CheckTensorParallel(layers, expertHidden, sharedExpertHidden);
        Input = TensorParallelism is null ? IdentityRegion.Instance : layers.InputRegion(name);
        _outputRegion = TensorParallelism is null ? null
            : TensorParallelism.SequenceParallel ? new ReduceScatterToSequenceParallelRegion(name + ".output", TensorParallelism.Group)
            : new ReduceFromTensorParallelRegion(TensorParallelism.Group);
        ExpertCount = experts;
        int local = ExpertParallelism?.LocalExperts(experts, name) ?? experts;
        FirstExpert = ExpertParallelism is null ? 0 : ExpertParallelism.Rank * local;
        Router = layers.Linear(name + ".router", channels, experts, bias: false);
        var list = new SwiGluMlp[local];
        for (int j = 0; j < local; j++)
        {
            list[j] = new SwiGluMlp(layers, $"{name}.experts.{FirstExpert + j}", channels, expertHidden, bias: false);
            if (ExpertParallelism is null) continue;
            foreach (var linear in new[] { list[j].Gate, list[j].Up, list[j].Projection }) layers.MarkExpertParameter(linear.Weight.Name);
        }
        Experts = list;
        if (sharedExpertHidden > 0)
        {
            // Declared after the routed experts and never marked as expert parameters: every rank holds the whole shared
            // expert and its gate, as it does the router, so data parallelism reduces them over the whole dp group.
            SharedExpert = new SwiGluMlp(layers, name + ".shared_expert", channels, sharedExpertHidden, bias: false);
            SharedExpertGate = layers.Linear(name + ".shared_expert_gate", channels, 1, bias: false);
        }
        // Trained adapters on a tensor-parallel mixture of experts are not built (the experts' split products are the layer's
        // own, not the column/row-parallel layers the adapters' cut is proven on): the factory refuses the row-parallel-unreduced
        // projections, and any other adapted layer (router, gate, up, shared expert) is refused here.
        if (TensorParallelism is not null && new[] { Router }.Concat(Experts.Concat(SharedExpert is null ? [] : [SharedExpert])
                .SelectMany(e => new[] { e.Gate, e.Up, e.Projection })).FirstOrDefault(l => l is Adapters.LoraLinear) is { } adapted)
            throw new NotSupportedException($"LoRA: layer '{adapted.Name}' is in a tensor-parallel mixture of experts; LoRA on a mixture of experts is trained without --tp only (tensor-parallel LoRA covers dense models)");
        // Served adapters (multi-LoRA) pick each row's adapter by its place in the step's rows; an expert runs a gathered subset
        // of them, so around each expert's products the batch's rows follow the gather (MultiLoraBatch.Gather, in Run). The
        // router and the shared expert read all the step's rows as they are. Under tensor or expert parallelism they are refused.
        if (new[] { Router }.Concat(Experts.Concat(SharedExpert is null ? [] : [SharedExpert]).SelectMany(e => new[] { e.Gate, e.Up, e.Projection }))
            .FirstOrDefault(l => l is Adapters.MultiLoraLinear) is { } served)
        {
            if (TensorParallelism is not null || ExpertParallelism is not null)
                throw new NotSupportedException($"served LoRA: layer '{served.Name}' is a mixture of experts' layer under {(TensorParallelism is not null ? "tensor" : "expert")} parallelism; adapters on a mixture of experts are served unmerged on one device only (merge them at load)");
            _servedAdapters = layers.ServedAdapters;
        }
        ExpertsPerToken = expertsPerToken;
        NormalizeWeights = normalizeWeights;
        AuxiliaryLossCoefficient = auxiliaryLossCoefficient;
        _logits = new ActivationKey(name + ".router.logits");
        _hostStaging = new ActivationKey(name + ".router.host");
        _dLogits = new ActivationKey(name + ".router.dy");
        _dots = new ActivationKey(name + ".experts.dw");
        _output = new ActivationKey(name + ".out");
        _partialOutput = new ActivationKey(name + ".out.partial");
        _dOutputGathered = new ActivationKey(name + ".out.gathered.dy");
        _tensorParallelDots = new ActivationKey(name + ".dw.tp");
        ActivationKey[] Keys(string suffix) => Enumerable.Range(0, experts).Select(j => new ActivationKey($"{name}.experts.{j}.{suffix}")).ToArray();
        _ids = Keys("ids");
        _weights = Keys("w");
        _rows = Keys("x");
        _expertOut = Keys("y");
        _scaled = Keys("wy");
        _dRows = Keys("dy_rows");
        _dScaled = Keys("dwy");
        _dExpertIn = Keys("dx");
        _localIds = Keys("received_ids");
        _dispatch = new ExpertDispatchKeys(name);
        _shared = new SharedExpertKeys(name);
        _deviceKeys = new DeviceRoutingKeys(name);
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public ITensorParallelRegion Input { get; }

    /// <summary>The router C to E (no bias).</summary>
    public Linear Router { get; }

    /// <summary>The experts this rank holds: all E on one device, experts [<see cref="FirstExpert"/>, + E / ep) under expert parallelism.</summary>
    public IReadOnlyList<SwiGluMlp> Experts { get; }

    /// <summary>The shared expert every token runs (Qwen2-MoE's shared_expert, SwiGLU C to F_s to C), or null when there is none.</summary>
    public SwiGluMlp? SharedExpert { get; }

    /// <summary>The shared expert's gate C to 1 (no bias): its output is scaled by the sigmoid of this; null without a shared expert.</summary>
    public Linear? SharedExpertGate { get; }

    /// <summary>The layer's experts E (on every rank, whatever it holds).</summary>
    public int ExpertCount { get; }

    /// <summary>The global index of <see cref="Experts"/>[0] (0 on one device).</summary>
    public int FirstExpert { get; }

    /// <summary>This rank's tensor parallelism (a slice of every expert's hidden units), or null.</summary>
    public TensorParallelism? TensorParallelism { get; }

    /// <summary>This rank's expert parallelism, or null when the layer holds every expert.</summary>
    public ExpertParallelism? ExpertParallelism { get; }

    /// <summary>Experts each token is routed to, k.</summary>
    public int ExpertsPerToken { get; }

    /// <summary>Whether a token's k weights are divided by their sum.</summary>
    public bool NormalizeWeights { get; }

    /// <summary>Coefficient of the load-balancing loss; 0 turns it off.</summary>
    public double AuxiliaryLossCoefficient { get; }

    /// <summary>
    /// The weight of this layer's load-balancing loss in the objective whose gradient backward computes (default 1). The
    /// transformer sets it to the step's loss scale times the micro-batch's tokens, so that the loss counts as if each token
    /// carried it, as the cross-entropy's terms do.
    /// </summary>
    public double AuxiliaryLossWeight { get; set; } = 1.0;

    /// <summary>The load-balancing loss (coefficient included) of the last <see cref="Forward"/> (a training or evaluation pass;
    /// inference's <see cref="ForwardAccumulate"/> leaves it); 0 when off.</summary>
    public double LastAuxiliaryLoss { get; private set; }

    /// <summary>The first expert's output projection (every expert's is alike; none has a bias).</summary>
    public Linear Projection => Experts[0].Projection;

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        if (TensorParallelism is not null) return ForwardTensorParallel(ctx, x, residual);
        var y = ctx.Buffer(_output, x.Shape, x.DType);               // (N, C)
        if (residual is not null) x.Backend.Copy(residual, y);
        else x.Backend.Fill(y, 0);
        var routing = Run(ctx, x, y);
        if (SharedExpert is not null) AddSharedExpert(ctx, x, y);
        LastAuxiliaryLoss = routing.AuxiliaryLoss(AuxiliaryLossCoefficient);   // checkpointed blocks' forwards save nothing
        return y;
    }

    /// <inheritdoc/>
    public void ForwardAccumulate(in PassContext ctx, Tensor x, INormalization norm, Tensor residual)
    {
        ArgumentNullException.ThrowIfNull(norm);
        if (TensorParallelism is not null)
        {
            ForwardAccumulateTensorParallel(ctx, x, norm, residual);
            return;
        }
        var rows = norm.Forward(ctx, x);                             // (N, C)
        if (TryRunOnDevice(ctx, rows, residual)) return;             // decode-size steps: routed on the device, nothing read back
        Run(ctx, rows, residual);
        if (SharedExpert is not null) AddSharedExpert(ctx, rows, residual);
    }

    /// <summary>Routes the rows x (N, C) and adds each expert's weighted output into <paramref name="output"/> (N, C).</summary>
    private ExpertRouting Run(in PassContext ctx, Tensor x, Tensor output)
    {
        if (x.Rank != 2 || x.Size(1) != Router.InFeatures)
            throw new ArgumentException($"{Name}: input {x.Shape} must be rows (N, {Router.InFeatures})");
        var backend = x.Backend;
        int n = x.Size(0), c = x.Size(1);
        var logits = Router.Forward(ctx, x);                         // (N, E)
        ctx.Save(_logits, logits);
        var routing = Route(ctx, logits);
        if (ExpertParallelism is not null)
        {
            RunExpertParallel(ctx, x, output, routing);
            return routing;
        }
        for (int j = 0; j < Experts.Count; j++)
        {
            var tokens = routing.TokensOf(j);
            int count = tokens.Length;
            if (count == 0) continue;
            var ids = ctx.Buffer(_ids[j], new Shape(count), DType.I32);                  // (n_j)
            backend.CopyFromHost<int>(tokens, ids);
            var w = ctx.Buffer(_weights[j], new Shape(count, 1, 1), x.DType);            // (n_j, 1, 1)
            Upload(ctx, SlotValues(routing.Weights, routing.SlotsOf(j)), w);
            var rows = ctx.Buffer(_rows[j], new Shape(count, c), x.DType);               // (n_j, C): the expert's tokens
            backend.EmbeddingForward(ids, x, rows);
            Tensor expertOut;
            using (_servedAdapters is null ? default : _servedAdapters.Gather(tokens))   // the gathered rows' own adapters
                expertOut = Experts[j].Forward(ctx, rows);                               // (n_j, C)
            var scaled = ctx.Buffer(_scaled[j], new Shape(count, 1, c), x.DType);        // (n_j, 1, C) = w · expert(x)
            backend.MatMul(w, expertOut.Reshape(count, 1, c), scaled);
            backend.EmbeddingBackward(ids, scaled.Reshape(count, c), output);           // output[ids] += rows
            ctx.Save(_ids[j], ids);
            ctx.Save(_weights[j], w);
            ctx.Save(_expertOut[j], expertOut);
        }
        return routing;
    }

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false, bool projectionBiasGradientTaken = false)
    {
        if (projectionBiasGradientTaken)
            throw new InvalidOperationException($"{Name}: the experts' projections have no bias whose gradient could have been taken");
        if (accumulateDx && TensorParallelism is not null)
            throw new NotSupportedException($"{Name}: the input gradient of a tensor-parallel mixture of experts is reduced over ranks and cannot accumulate into dx");
        var backend = dy.Backend;
        var dOut = OutputGradient(ctx, dy);                          // (N, C): the gradient of the whole combined output
        var dIn = Input.GradientBuffer(ctx, dx);                     // (N, C): the gradient of the rows the router and experts read
        int n = dOut.Size(0), c = dOut.Size(1), k = ExpertsPerToken;
        var routing = Route(ctx, ctx.Get(_logits));
        var weightGradients = new double[n * k];                     // (N, k): dL/dw of each slot (this rank's part under tp)
        if (!accumulateDx) backend.Fill(dIn, 0);
        if (ExpertParallelism is not null) BackwardExpertParallel(ctx, dOut, dIn, routing, weightGradients);
        else for (int j = 0; j < Experts.Count; j++)
        {
            var slots = routing.SlotsOf(j);
            int count = slots.Length;
            if (count == 0) continue;                                // no token chose it: no gradient
            var ids = ctx.Get(_ids[j]);                              // (n_j)
            var w = ctx.Get(_weights[j]);                            // (n_j, 1, 1)
            var expertOut = ctx.Get(_expertOut[j]);                  // (n_j, C)
            var dRows = ctx.Scratch(_dRows[j], new Shape(count, 1, c), dOut.DType);      // (n_j, 1, C): dy of the tokens
            backend.EmbeddingForward(ids, dOut, dRows.Reshape(count, c));
            var dots = ctx.Scratch(_dots, new Shape(count, 1, 1), dOut.DType);           // (n_j, 1, 1): dL/dw = dy · expert(x)
            backend.MatMul(dRows, expertOut.Reshape(count, 1, c), dots, transposeB: true);
            var host = Download(ctx, dots);
            for (int i = 0; i < count; i++) weightGradients[slots[i]] = host[i];
            var dScaled = ctx.Scratch(_dScaled[j], new Shape(count, 1, c), dOut.DType);  // (n_j, 1, C): w · dy
            backend.MatMul(w, dRows, dScaled);
            var dExpertIn = ctx.Scratch(_dExpertIn[j], new Shape(count, c), dOut.DType); // (n_j, C)
            Experts[j].Backward(ctx, dScaled.Reshape(count, c), dExpertIn);
            backend.EmbeddingBackward(ids, dExpertIn, dIn);          // dIn[ids] += the expert's input gradient
        }
        var gateGradients = SharedExpert is not null ? BackwardSharedExpert(ctx, dOut, dIn) : null;   // (N): dL/dg
        // Under tp each expert output, and so each dot product with dy, is this rank's partial: summed over the ranks (one
        // all-reduce of the (N, k [+ 1]) dot products) the router's and the shared gate's gradients are every rank's, bit for bit.
        if (TensorParallelism is not null) SumOverTensorParallel(ctx, weightGradients, gateGradients, dOut.DType);
        var replicatedDx = ReplicatedInputGradient(dIn);
        if (gateGradients is not null) BackwardSharedExpertGate(ctx, gateGradients, replicatedDx);
        var dz = routing.LogitGradient(weightGradients, AuxiliaryLossCoefficient, AuxiliaryLossWeight);
        var dLogits = ctx.Scratch(_dLogits, new Shape(n, ExpertCount), dOut.DType);    // (N, E)
        Upload(ctx, dz, dLogits);
        Router.Backward(ctx, dLogits, replicatedDx, accumulateDx: true);
        Input.Backward(ctx, dIn, dx);
    }

    /// <summary>Reads the logits (N, E) back and routes them (the device waits here).</summary>
    private ExpertRouting Route(in PassContext ctx, Tensor logits) =>
        ExpertRouting.Route(Download(ctx, logits), logits.Size(0), ExpertCount, ExpertsPerToken, NormalizeWeights);

    private static double[] SlotValues(double[] values, ReadOnlySpan<int> slots)
    {
        var result = new double[slots.Length];
        for (int i = 0; i < slots.Length; i++) result[i] = values[slots[i]];
        return result;
    }

    /// <summary>A tensor's values on the host in F64 (F32 and F64 read directly, other dtypes through an F32 copy).</summary>
    private double[] Download(in PassContext ctx, Tensor t)
    {
        var backend = t.Backend;
        var result = new double[t.NumElements];
        if (t.DType == DType.F64) backend.CopyToHost<double>(t, result);
        else
        {
            var source = t;
            if (t.DType != DType.F32)
            {
                source = ctx.Scratch(_hostStaging, t.Shape, DType.F32);
                backend.Copy(t, source);
            }
            var floats = new float[t.NumElements];
            backend.CopyToHost<float>(source, floats);
            for (int i = 0; i < floats.Length; i++) result[i] = floats[i];
        }
        return result;
    }

    /// <summary>Writes host F64 <paramref name="values"/> into the contiguous <paramref name="destination"/> in its dtype.</summary>
    private void Upload(in PassContext ctx, double[] values, Tensor destination)
    {
        var backend = destination.Backend;
        if (destination.DType == DType.F64) { backend.CopyFromHost<double>(values, destination); return; }
        var floats = Array.ConvertAll(values, v => (float)v);
        if (destination.DType == DType.F32) { backend.CopyFromHost<float>(floats, destination); return; }
        var staging = ctx.Scratch(_hostStaging, destination.Shape, DType.F32);
        backend.CopyFromHost<float>(floats, staging);
        backend.Copy(staging, destination);
    }
}
