using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Inference's device-routed path (<see cref="IBackend.MoeRoute"/> and its family): for a decode-size step (at most
/// <see cref="DeviceRoutingMaxRows"/> rows; prefill-size steps too where the experts are fine-grained and run on tensor cores,
/// <see cref="DefaultRowBound"/>) the router's logits never leave the device. The softmax and top-k write each row's k
/// experts and weights, the alignment each expert's slots, one launch over a fixed grid of E experts runs every
/// expert's SwiGLU on its rows and one its down product, and the combine adds the weighted outputs (and Qwen2-MoE's gated
/// shared expert) onto the residual in slot order. Nothing is read back, so such a step can be recorded as a CUDA graph.
/// Training, larger steps and every layer the ops do not cover (tensor or expert parallelism, served LoRA adapters,
/// FP8, act-order or adapted experts, a dtype the backend's kernels lack) keep the host's routing (<see cref="Run"/>). Int8
/// and int4 experts take the device path too, dequantized as the expert kernels read them.
/// </summary>
public sealed partial class SparseMoeFeedForward
{
    /// <summary>
    /// The most rows a step may have for the device path where its experts are wide (past
    /// <see cref="DeviceRoutingMaxExpertWeights"/>), few (under <see cref="FineGrainedMinExperts"/>) or run off tensor cores:
    /// 64, decode steps and small verification steps.
    /// The experts' products read each weight once for every 64 of an expert's rows on tensor cores, or once for every 8 on
    /// CUDA cores (CUDA's F32 rows and other widths); past a few dozen rows a wide expert's rows are better served by the
    /// host-routed path's cuBLASLt products over gathered blocks (and a prefill's sync per layer is cheap next to its work):
    /// on the H100 (session 37, <c>CudaMixtureOfExpertsSpeedReport</c>, Mixtral-8x7B's experts, two layers) the device path
    /// took 0.93-0.97x the host's speed at 256 rows and 0.47x at 4,096. 64 is also the bound of the backend's decode products.
    /// </summary>
    public const int DefaultDeviceRoutingMaxRows = 64;

    /// <summary>
    /// The most rows a step may have for the device path where the experts are fine-grained (at most
    /// <see cref="DeviceRoutingMaxExpertWeights"/> weights a product, at least <see cref="FineGrainedMinExperts"/> of them) and
    /// run on tensor cores (<see cref="MoeExpertWeights.AtWeightBandwidth"/>): 4,096, the largest prefill step measured, and no
    /// more than gives an expert <see cref="FineGrainedMaxRowsAnExpert"/> rows on average. There the host path's cost grows with
    /// the experts a step chooses (a read-back, then three launches an expert), which such models have by the dozen, while
    /// the device path's grid takes every expert at once: on the H100 (session 37, two layers, 256 to 4,096 rows in one step)
    /// the device path was 4.8-8.7x faster at Qwen3-30B-A3B's shape (128 experts of 768, top 8) and 1.5-3.0x at
    /// Qwen2-57B-A14B's (64 experts of 2,560, top 8, 9.2 Mi weights a product; 512 rows an expert at 4,096 rows).
    /// </summary>
    public const int DefaultNarrowExpertDeviceRoutingMaxRows = 4096;

    /// <summary>The fewest experts for which narrow experts take prefill-size steps on the device (64: the fewest measured
    /// winning; with few experts the host path launches little, and Mixtral's eight lost from 64 rows an expert).</summary>
    public const int FineGrainedMinExperts = 64;

    /// <summary>The most rows an expert gets on average (rows x k / E) in a prefill-size step on the device (512: the most
    /// measured winning; the device path reads an expert's weights again for every 64 of its rows).</summary>
    public const int FineGrainedMaxRowsAnExpert = 512;

    /// <summary>The most rows a step may have for this layer's device path; null (the default) for the bound its experts
    /// set (<see cref="DefaultRowBound"/>). The MoE timing report sets it to time each path at every step size.</summary>
    public int? DeviceRoutingMaxRows { get; set; }

    /// <summary>The default bound on a device-routed step's rows: for fine-grained experts on tensor cores (at most
    /// <paramref name="maxExpertWeights"/> weights a product, at least <see cref="FineGrainedMinExperts"/> experts) the rows
    /// that give an expert <see cref="FineGrainedMaxRowsAnExpert"/> on average, at most
    /// <see cref="DefaultNarrowExpertDeviceRoutingMaxRows"/> and at least <see cref="DefaultDeviceRoutingMaxRows"/>;
    /// <see cref="DefaultDeviceRoutingMaxRows"/> for every other layer.</summary>
    public static int DefaultRowBound(long expertWeights, long maxExpertWeights, bool onTensorCores, int experts, int expertsPerToken)
    {
        if (expertWeights > maxExpertWeights || !onTensorCores || experts < FineGrainedMinExperts) return DefaultDeviceRoutingMaxRows;
        long rows = (long)FineGrainedMaxRowsAnExpert * experts / Math.Max(1, expertsPerToken);
        return (int)Math.Clamp(rows, DefaultDeviceRoutingMaxRows, DefaultNarrowExpertDeviceRoutingMaxRows);
    }

    /// <summary>The bound on a device-routed step's rows of <paramref name="dtype"/> for these experts
    /// (<see cref="DeviceRoutingMaxRows"/> where set).</summary>
    private int RowBound(MoeExpertWeights experts, DType dtype) =>
        DeviceRoutingMaxRows ?? DefaultRowBound(ExpertWeights, DeviceRoutingMaxExpertWeights, experts.AtWeightBandwidth(dtype), ExpertCount, ExpertsPerToken);

    /// <summary>The most rows of <paramref name="dtype"/> a step may have and take the device path: 0 where this layer never
    /// takes it (see <see cref="RoutesOnDevice"/>).</summary>
    public int DeviceRowBound(DType dtype) =>
        DeviceExperts() is { } experts && experts.TakesRows(dtype) && WidthAllows(experts, dtype) ? RowBound(experts, dtype) : 0;

    /// <summary>Weights in one of an expert's three products (C x F').</summary>
    private long ExpertWeights => Experts[0].Gate.Weight.Shape.NumElements;

    /// <summary>
    /// The largest expert, in weights of one of its three products (C x F'), that the device path takes by default where its
    /// backend does not run the experts at the weights' bandwidth (<see cref="MoeExpertWeights.AtWeightBandwidth"/>: CUDA's
    /// CUDA-core expert kernels, F32 rows or widths off the tensor-core form; the CPU): 16 Mi. Those kernels read a weight row
    /// once for 8 of an expert's rows but x's rows again for every weight row, on CUDA cores, so they pay where the experts
    /// are many and small (the host path's launches a layer grow with the experts chosen, and its read-back keeps the step out
    /// of a CUDA graph), not where they are few and wide: on the H200 (session 35, <c>CudaMixtureOfExpertsSpeedReport</c>,
    /// Mixtral-8x7B's experts, C 4096 x F 14,336 = 58.7 Mi, two layers) the host path beat them at every row count (2.7
    /// against 14.3 ms a step at 64 sequences), while at Qwen3-30B-A3B's 1.5 Mi they were 1.5-5.4x faster than the host path.
    /// The tensor-core expert products (session 36, H100) beat the host path at both widths and every row count measured
    /// (Mixtral 0.85 / 2.20 / 2.28 against 1.01 / 3.17 / 3.32 ms at 1 / 16 / 64 sequences), so experts they take are not
    /// bounded. The crossing between the two measured widths for the CUDA-core kernels is not measured.
    /// </summary>
    public const long DefaultDeviceRoutingMaxExpertWeights = 16L << 20;

    /// <summary>The largest expert (C x F' weights) for which this layer takes the device path
    /// (<see cref="DefaultDeviceRoutingMaxExpertWeights"/> unless set; benchmarks and tests set it to compare the paths).</summary>
    public long DeviceRoutingMaxExpertWeights { get; set; } = DefaultDeviceRoutingMaxExpertWeights;

    private DeviceRoutingState? _device;

    /// <summary>
    /// Whether inference's forward (<see cref="ForwardAccumulate"/>) may route decode-size steps on the device (default true).
    /// Off, every step routes on the host as training does: tests compare the two paths this way.
    /// </summary>
    public bool DeviceRouting { get; set; } = true;

    /// <summary>Inference forwards that took the device path (a count for tests and diagnostics; a recorded graph's replays add nothing).</summary>
    public long DeviceRoutedForwards { get; private set; }

    /// <summary>
    /// Whether an inference step of <paramref name="rows"/> rows of <paramref name="dtype"/> takes the device path, so that it
    /// reads nothing back and may be recorded: the layer is a plain mixture of experts on one device (no tensor or expert
    /// parallelism, no served adapters, experts of plain products: floating-point in the rows' dtype, or all int8 or all int4
    /// without an input order) whose backend has the ops for the rows' dtype, its experts are narrow enough or run at the
    /// weights' bandwidth there (<see cref="WidthAllows"/>), and <paramref name="rows"/> is within the bound their width sets
    /// (<see cref="RowBound"/>). Prepares the experts' table of weights on first call (one small upload; call it
    /// outside a recorded graph).
    /// </summary>
    public bool RoutesOnDevice(int rows, DType dtype)
    {
        int bound = DeviceRowBound(dtype);
        return bound > 0 && rows <= bound;
    }

    /// <summary>Whether the experts' width lets rows of <paramref name="dtype"/> take the device path: experts of at most
    /// <see cref="DeviceRoutingMaxExpertWeights"/> weights a product, or any width where the backend runs them at the weights'
    /// bandwidth (<see cref="MoeExpertWeights.AtWeightBandwidth"/>: CUDA's tensor-core expert products).</summary>
    private bool WidthAllows(MoeExpertWeights experts, DType dtype) =>
        ExpertWeights <= DeviceRoutingMaxExpertWeights || experts.AtWeightBandwidth(dtype);

    /// <summary>The experts' weights as the device ops read them, prepared once; null when the device path is not for this layer.</summary>
    private MoeExpertWeights? DeviceExperts()
    {
        if (!DeviceRouting || TensorParallelism is not null || ExpertParallelism is not null || _servedAdapters is not null) return null;
        if (Experts.Count == 0) return null;
        var layers = Experts.SelectMany(e => new[] { e.Gate, e.Up, e.Projection }).ToList();
        if (layers.Any(l => l.Bias is not null) || Experts.Any(e => e.GeluGate)) return null;
        // Every expert weight in floating point, or every one quantized (int8 or int4: the expert ops refuse FP8 and input
        // orders, and the host path takes those).
        bool quantized = layers.All(l => l.IsPlainQuantizedProduct);
        if (!quantized && layers.Any(l => !l.IsPlainProduct)) return null;
        var weights = layers.Select(l => quantized ? l.Weight.Quantized!.Values : l.Weight.Value).ToList();
        if (_device is { } state && state.Weights.SequenceEqual(weights)) return state.Experts;   // weights do not move at inference
        MoeExpertWeights? experts = null;
        if (quantized || weights.All(w => w.IsContiguous))
        {
            var backend = weights[0].Backend;
            try
            {
                experts = quantized
                    ? backend.PrepareMoeExperts(Experts.Select(e => e.Gate.Weight.Quantized!).ToList(),
                        Experts.Select(e => e.Up.Weight.Quantized!).ToList(), Experts.Select(e => e.Projection.Weight.Quantized!).ToList())
                    : backend.PrepareMoeExperts(Experts.Select(e => e.Gate.Weight.Value).ToList(),
                        Experts.Select(e => e.Up.Weight.Value).ToList(), Experts.Select(e => e.Projection.Weight.Value).ToList());
            }
            catch (Exception ex) when (ex is NotSupportedException or ArgumentException)
            {
                experts = null;                                  // a format or dtype the backend's kernels lack: the host path
            }
        }
        _device = new DeviceRoutingState(weights, experts);
        return experts;
    }

    /// <summary>Routes the rows x (N, C) on the device and adds the experts' weighted outputs (and the shared expert's) into
    /// <paramref name="output"/> (N, C); false, having done nothing, when the step is not for the device path.</summary>
    private bool TryRunOnDevice(in PassContext ctx, Tensor x, Tensor output)
    {
        if (x.Rank != 2 || !x.IsContiguous || !output.IsContiguous || !RoutesOnDevice(x.Size(0), x.DType)) return false;
        var experts = DeviceExperts()!;
        var backend = x.Backend;
        int n = x.Size(0), c = x.Size(1), k = ExpertsPerToken, e = ExpertCount;
        var logits = Router.Forward(ctx, x);                                                        // (N, E)
        var ids = ctx.Buffer(_deviceKeys.Ids, new Shape(n, k), DType.I32);                          // (N, k)
        var weights = ctx.Buffer(_deviceKeys.Weights, new Shape(n, k), x.DType == DType.F64 ? DType.F64 : DType.F32);   // (N, k)
        backend.MoeRoute(logits, ids, weights, NormalizeWeights);
        var offsets = ctx.Buffer(_deviceKeys.Offsets, new Shape(e + 1), DType.I32);                 // (E + 1)
        var slots = ctx.Buffer(_deviceKeys.Slots, new Shape(n * k), DType.I32);                     // (N k)
        backend.MoeAlign(ids, offsets, slots);
        var hidden = ctx.Buffer(_deviceKeys.Hidden, new Shape(n * k, experts.Hidden), x.DType);     // (N k, F'): by pair
        backend.MoeExpertSwiGlu(x, experts, offsets, slots, hidden);
        var expertOut = ctx.Buffer(_deviceKeys.Output, new Shape(n * k, c), x.DType);              // (N k, C): by slot
        backend.MoeExpertDown(hidden, experts, offsets, slots, expertOut);
        Tensor? shared = null, sharedLogits = null;
        if (SharedExpert is not null)
        {
            shared = SharedExpert.Forward(ctx, x);                                                  // (N, C)
            sharedLogits = SharedExpertGate!.Forward(ctx, x);                                       // (N, 1)
        }
        backend.MoeCombine(expertOut, weights, output, shared, sharedLogits);
        DeviceRoutedForwards++;
        return true;
    }

    /// <summary>The layer's weights when the device path was last prepared, and what it prepared (null: not for the device path).</summary>
    private sealed record DeviceRoutingState(IReadOnlyList<Tensor> Weights, MoeExpertWeights? Experts);

    /// <summary>The device path's buffers.</summary>
    private sealed class DeviceRoutingKeys(string name)
    {
        public ActivationKey Ids { get; } = new(name + ".device.ids");             // (N, k) I32
        public ActivationKey Weights { get; } = new(name + ".device.w");           // (N, k) F32 (F64 for F64 rows)
        public ActivationKey Offsets { get; } = new(name + ".device.offsets");     // (E + 1) I32
        public ActivationKey Slots { get; } = new(name + ".device.slots");         // (N k) I32
        public ActivationKey Hidden { get; } = new(name + ".device.hidden");       // (N k, F')
        public ActivationKey Output { get; } = new(name + ".device.y");            // (N k, C)
    }
}
