namespace Tessera.Tensors;

/// <summary>
/// The op set every backend implements. Ops are enqueued in order and may run asynchronously
/// (the CUDA backend enqueues on a stream); only <see cref="CopyToHost{T}"/> and
/// <see cref="Synchronize"/> wait. All tensors passed to one call live on this backend.
///
/// Conventions:
/// <list type="bullet">
/// <item>Shapes in the docs use B batch, T query length, S key length, H query heads, K key/value
/// heads, D head size, C channels, F hidden (MLP) size, V vocabulary, N rows (B*T).</item>
/// <item>Unless an op says otherwise its tensors are contiguous. Attention and RoPE accept views
/// whose last dimension is contiguous (e.g. Q, K, V sliced out of one fused QKV projection).</item>
/// <item>Parameter gradients (dWeight, dBias, dTable) always accumulate (+=), so gradient
/// accumulation over micro-batches needs no extra op. Activation gradients overwrite, except
/// where an op says "accumulates".</item>
/// <item>Floating-point ops accept F32 and F64 on every backend; BF16 where the backend says so
/// (the CUDA backend computes in BF16 with F32 accumulation). Norm statistics, log-sum-exp and
/// losses are F32 (F64 when the inputs are F64).</item>
/// </list>
/// </summary>
public interface IBackend
{
    /// <summary>The device this backend computes on.</summary>
    Device Device { get; }

    // ---------------------------------------------------------------- memory

    /// <summary>A new contiguous tensor; its contents are undefined.</summary>
    Tensor Allocate(Shape shape, DType dtype);

    /// <summary>Copies host data into a contiguous tensor; <paramref name="source"/> length must equal its element count.</summary>
    void CopyFromHost<T>(ReadOnlySpan<T> source, Tensor destination) where T : unmanaged;

    /// <summary>Copies a tensor (any layout) to host memory in row-major order; waits for pending work.</summary>
    void CopyToHost<T>(Tensor source, Span<T> destination) where T : unmanaged;

    /// <summary>destination = source, element by element; shapes equal, layouts arbitrary, dtypes may differ (a cast).</summary>
    void Copy(Tensor source, Tensor destination);

    /// <summary>Sets every element of a contiguous tensor to <paramref name="value"/>.</summary>
    void Fill(Tensor tensor, double value);

    /// <summary>Waits until every enqueued op has finished.</summary>
    void Synchronize();

    // ---------------------------------------------------------------- matrix products

    /// <summary>
    /// c = alpha * op(a) @ op(b) + beta * c (+ bias broadcast over rows), where op transposes when asked.
    /// Rank 2: a (M,K) or (K,M) when <paramref name="transposeA"/>; b (K,N) or (N,K) when <paramref name="transposeB"/>; c (M,N).
    /// Rank 3: a leading batch dimension on a, b and c (a batched, strided product).
    /// <paramref name="bias"/> (N) is added after scaling. beta = 1 accumulates (weight gradients).
    /// <paramref name="epilogue"/> fuses an activation or a bias gradient into the product (see <see cref="MatMulEpilogue"/>):
    /// <paramref name="auxiliary"/> (M,N) is the GELU pre-activation (written by Gelu, read by GeluBackward) and
    /// <paramref name="biasGradient"/> (M) the bias gradient accumulated by BiasGradient; both null otherwise.
    /// <paramref name="addend"/> (the shape and dtype of c, not overlapping it) is added to the result, which is written to c:
    /// c = alpha * op(a) @ op(b) + bias + addend, with beta = 0 and no epilogue (a residual connection in the product).
    /// </summary>
    void MatMul(Tensor a, Tensor b, Tensor c, bool transposeA = false, bool transposeB = false,
        double alpha = 1.0, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? biasGradient = null,
        Tensor? addend = null);

    /// <summary>sums (C) += column sums of x (N,C): the bias gradient of a linear layer.</summary>
    void SumRows(Tensor x, Tensor sums);

    /// <summary>
    /// y (M, N) = x (M, K) W^T (+ bias (N)) (+ beta y, or + addend (M, N)), then the epilogue, with W (N, K) the int8 or FP8 weight
    /// <paramref name="weight"/> stands for (row n = Scales[n] * Values[n, ·]): an inference product over weight-only quantized
    /// weights. x, y, bias, addend and auxiliary share one floating-point dtype. <paramref name="epilogue"/> is None or Gelu
    /// (<paramref name="auxiliary"/> (M, N) receives the pre-activation); an addend takes beta = 0, as in <see cref="MatMul"/>.
    /// For int8 values: equal, up to the order of the sums, to <see cref="Dequantize"/> into a tensor of x's dtype and then
    /// <see cref="MatMul"/> with transposeB. With <paramref name="norm"/>, x is RMS-normalized first, as
    /// <see cref="RmsNormMatMul"/> does for a floating-point weight (the int8 decode step's norms ride in its products).
    /// <para>FP8 weights (<see cref="QuantizedWeight.IsFp8"/>, W8A8-FP8): each row m of x (normalized first when
    /// <paramref name="norm"/> is given) is quantized dynamically as <see cref="Fp8Quantization.QuantizeRow"/> does, scale
    /// sx[m] = max|x[m, ·]| / 448 in F32 (1 for a row of zeros) and codes qx = e4m3(x / sx[m]) by an F32 division, and
    /// y[m, n] = sx[m] Scales[n] Σ_k qx[m, k] Values[n, k] + bias[n] (+ beta y, or + addend), then the epilogue, in y's dtype.
    /// Every backend computes these codes and scales; the sums' order and precision are the backend's.</para>
    /// <para>Group-wise int4 weights (<see cref="QuantizedWeight.IsInt4"/>): W[n, k] = Scales[n, g] (q[n, k] - Zeros[n, g]) with
    /// g = k / GroupSize, multiplied in x's precision as for int8.</para>
    /// <para>A weight with an input order (<see cref="QuantizedWeight.InputOrder"/>): x's columns (normalized first when
    /// <paramref name="norm"/> is given) are gathered in that order into scratch (<see cref="GatherColumns"/>), then the product
    /// over the stored columns, so y is the product of the weight it stands for.</para>
    /// </summary>
    void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null, RmsNormPrologue? norm = null);

    /// <summary>
    /// Llama's MLP before its last product over quantized weights: output (N, F) = SiLU(x gate^T + gateBias) * (x up^T + upBias)
    /// for x (N, C) and gate, up quantized (F, C) of one format (<see cref="QuantizedMatMul"/>'s, x normalized first when
    /// <paramref name="norm"/> is given). The result equals <see cref="QuantizedMatMul"/> of each weight then
    /// <see cref="SwiGluForward"/>; a device may read both weights in one pass (the CUDA backend's int4 and int8 streams at 1 to
    /// 4 rows and decode products at 5 to 64), or dequantize both for one product at N = 2F.
    /// </summary>
    void QuantizedMatMulSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias = null,
        Tensor? upBias = null, RmsNormPrologue? norm = null);

    /// <summary>output (N, K) = the weight <paramref name="weight"/> stands for, Scales[n] * Values[n, k] (int4: scale (q - zero) of the
    /// element's group), in output's floating-point dtype; with an input order, in the inputs' order (column k of output is
    /// stored column <c>InputOrderInverse[k]</c>).</summary>
    void Dequantize(QuantizedWeight weight, Tensor output);

    /// <summary>
    /// output (M, J)[m, j] = x (M, K)[m, indices[j]] for <paramref name="indices"/> (J) I32 on this backend, each in 0 .. K - 1:
    /// a gather of columns (x's rows may be strided; output contiguous, of x's dtype, any of F32, F64, BF16, F16). What a
    /// product over a weight with an input order (<see cref="QuantizedWeight.InputOrder"/>) does to x first. The CPU backend
    /// refuses an index outside x; a device backend does not read the indices back (the host checks them once, when it builds
    /// them: <see cref="QuantizedWeight.CheckPermutation"/>).
    /// </summary>
    void GatherColumns(Tensor x, Tensor indices, Tensor output);

    // ---------------------------------------------------------------- elementwise

    /// <summary>output = a + b; same shapes. <paramref name="output"/> may alias a or b.</summary>
    void Add(Tensor a, Tensor b, Tensor output);

    /// <summary>accumulator += alpha * x; same shapes.</summary>
    void Accumulate(Tensor accumulator, Tensor x, double alpha = 1.0);

    /// <summary>output = a * b elementwise (a dropout mask applied to an input); same shapes. <paramref name="output"/> may alias a or b.</summary>
    void Multiply(Tensor a, Tensor b, Tensor output);

    /// <summary>x *= factor, in place.</summary>
    void Scale(Tensor x, double factor);

    /// <summary>x = cap tanh(x / cap), in place, contiguous (Gemma 2's final logit soft-capping); cap &gt; 0.</summary>
    void SoftCap(Tensor x, double cap);

    /// <summary>dy *= 1 - (y / cap)^2, in place: the gradient through <see cref="SoftCap"/> from its output y; same shapes, contiguous.</summary>
    void SoftCapBackward(Tensor y, Tensor dy, double cap);

    /// <summary>output = GELU(x), tanh approximation (GPT-2's "gelu_new").</summary>
    void GeluForward(Tensor x, Tensor output);

    /// <summary>dx = dOutput * GELU'(x).</summary>
    void GeluBackward(Tensor x, Tensor dOutput, Tensor dx);

    /// <summary>
    /// output (N,F) = SiLU(gate) * up, gate and up (N,F). Each tensor is contiguous, or a rank-2 view whose rows are contiguous:
    /// gate and up may be the two halves of one (N, 2F) product (a fused gate/up projection), read in place.
    /// </summary>
    void SwiGluForward(Tensor gate, Tensor up, Tensor output);

    /// <summary>
    /// Gradients of <see cref="SwiGluForward"/>: dGate, dUp (N,F) from dOutput (N,F). Views as in <see cref="SwiGluForward"/>:
    /// dGate and dUp may be the two halves of one (N, 2F) gradient, which a fused gate/up projection's backward reads whole.
    /// </summary>
    void SwiGluBackward(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp);

    /// <summary>
    /// Llama's MLP before its last product: output (N,F) = SiLU(x gateWeight^T + gateBias) * (x upWeight^T + upBias), x (N,C),
    /// gateWeight and upWeight (F,C) (nn.Linear's layout), biases (F) or null. One pass over both weights where the backend
    /// fuses it (the CUDA backend does for N &lt;= 4, decoding); otherwise two products and <see cref="SwiGluForward"/>.
    /// </summary>
    /// <remarks>With <paramref name="norm"/>, x is first normalized by it (see <see cref="RmsNormMatMul"/>). With
    /// <paramref name="geluGate"/> the gate's activation is the tanh GELU (<see cref="GeluForward"/>) in place of SiLU: GeGLU
    /// (Gemma), whose composition is the two products, <see cref="GeluForward"/> of the gate and <see cref="Multiply"/>.</remarks>
    void MatMulSwiGlu(Tensor x, Tensor gateWeight, Tensor upWeight, Tensor output, Tensor? gateBias = null, Tensor? upBias = null,
        RmsNormPrologue? norm = null, bool geluGate = false);

    /// <summary>
    /// Llama's MLP in training, before its last product: gateUp (N, 2F) = x (N, C) gateUpWeight^T, gateUpWeight (2F, C) the gate
    /// and up weights stacked ([Wg; Wu]), and activated (N, F) = SiLU(gateUp[:, :F]) * gateUp[:, F:], both kept (the backward
    /// reads gateUp): the product then <see cref="SwiGluForward"/> on its two halves, with the same bits. One launch where the
    /// backend fuses it (the CUDA backend's training product, under its HopperTrainingProducts option, on compute capability 9.0).
    /// gateUp and activated are rank-2 views whose rows are contiguous.
    /// </summary>
    void GateUpSwiGlu(Tensor x, Tensor gateUpWeight, Tensor gateUp, Tensor activated);

    /// <summary>
    /// Llama's MLP in training, from the gradient of its output back through SwiGLU (the backward of <see cref="GateUpSwiGlu"/>'s
    /// activation and the down product's input gradient): dActivated (N, F) = dOutput (N, C) downWeight (C, F), then
    /// dGateUp (N, 2F) = [dg | du] = <see cref="SwiGluBackward"/> of gateUp's halves with dActivated. dActivated is the
    /// composed form's scratch: one launch where the backend fuses it (the CUDA backend's training product, under its
    /// HopperTrainingProducts option, on compute capability 9.0), which never writes it and applies SwiGluBackward's formula
    /// to the product's rounded values, so its bits are the composition's wherever both compute the product alike. gateUp and
    /// dGateUp are rank-2 views whose rows are contiguous.
    /// </summary>
    void DownSwiGluBackward(Tensor dOutput, Tensor downWeight, Tensor gateUp, Tensor dGateUp, Tensor dActivated);

    /// <summary>
    /// output (N,F) = RMSNorm(x) weight^T (+ bias) for x (N,C) and weight (F,C): a pre-norm block's norm and the product that
    /// reads it, fused where the backend can (the CUDA backend for N &lt;= 4); otherwise <see cref="RmsNormForward"/> then
    /// <see cref="MatMul"/>. Nothing is saved for backward (inference).
    /// </summary>
    void RmsNormMatMul(Tensor x, RmsNormPrologue norm, Tensor weight, Tensor output, Tensor? bias = null);

    // ---------------------------------------------------------------- mixture of experts, routed on the device (inference)
    // One family: route (softmax, top-k), align (each expert's slots), the experts' SwiGLU and down products over a fixed
    // grid of E experts, and the combine. Fixed-size outputs, nothing read back: a step that uses them can be recorded.
    // N rows, E experts, k experts a row, C channels, F an expert's hidden width; a slot is n k + s (row n's s-th expert).

    /// <summary>
    /// Routing: for each row n of logits (N, E) (F32 or F64; BF16/F16 where the backend takes them), p = softmax(row), the k
    /// experts of highest p by falling p, equal p going to the lower expert index, into expertIds (N, k) I32, and their
    /// weights p (or, with <paramref name="normalize"/>, p divided by the sum of the k chosen) into weights (N, k) F32 or F64.
    /// The rule of the host's <c>ExpertRouting</c>.
    /// </summary>
    void MoeRoute(Tensor logits, Tensor expertIds, Tensor weights, bool normalize);

    /// <summary>
    /// Alignment: from expertIds (N, k) I32 (each in [0, E)), offsets (E + 1) I32 with offsets[0] = 0 and offsets[e + 1] -
    /// offsets[e] the slots routed to expert e, and slots (N k) I32 holding, in [offsets[e], offsets[e + 1]), the slots
    /// n k + s whose expert is e in ascending order (row order). A pair p is a position in slots.
    /// </summary>
    void MoeAlign(Tensor expertIds, Tensor offsets, Tensor slots);

    /// <summary>
    /// The experts' first half: hidden[p] (N k, F) = SiLU(x[n] gate_e^T) * (x[n] up_e^T) for every pair p, n = slots[p] / k
    /// and e the expert whose range of <paramref name="offsets"/> holds p; x (N, C) in the experts' dtype (quantized experts:
    /// a floating-point dtype the backend takes, <see cref="MoeExpertWeights.TakesRows"/>), offsets (E + 1)
    /// and slots (N k) from <see cref="MoeAlign"/>. Each expert's weights are read once for all its rows; an expert with no
    /// rows costs a launch slot only.
    /// </summary>
    void MoeExpertSwiGlu(Tensor x, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor hidden);

    /// <summary>
    /// The experts' second half: expertOutput[slots[p]] (N k, C), indexed by slot, = hidden[p] down_e^T for every pair p;
    /// hidden (N k, F) from <see cref="MoeExpertSwiGlu"/>, offsets and slots as there.
    /// </summary>
    void MoeExpertDown(Tensor hidden, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor expertOutput);

    /// <summary>
    /// The combine: output[n] (N, C) += Σ_s weights[n, s] expertOutput[n k + s], the slots summed in slot order (s = 0 first,
    /// no atomics: deterministic), then, when <paramref name="shared"/> is given, + sigmoid(sharedGateLogits[n]) shared[n]
    /// (Qwen2-MoE's gated shared expert: shared (N, C), sharedGateLogits (N, 1)). expertOutput (N k, C) from
    /// <see cref="MoeExpertDown"/>, weights (N, k) from <see cref="MoeRoute"/>; output holds the residual on entry.
    /// </summary>
    void MoeCombine(Tensor expertOutput, Tensor weights, Tensor output, Tensor? shared = null, Tensor? sharedGateLogits = null);

    /// <summary>
    /// The experts' weights as <see cref="MoeExpertSwiGlu"/> and <see cref="MoeExpertDown"/> read them: E gate and up (F, C) and
    /// down (C, F) weights of one dtype, contiguous, on this backend. A backend that reads them through a device table of
    /// addresses builds it here (one small upload): call it once, outside a recorded graph, and keep the result while the
    /// weights stay where they are.
    /// </summary>
    MoeExpertWeights PrepareMoeExperts(IReadOnlyList<Tensor> gate, IReadOnlyList<Tensor> up, IReadOnlyList<Tensor> down);

    /// <summary>
    /// Quantized experts as <see cref="MoeExpertSwiGlu"/> and <see cref="MoeExpertDown"/> read them: E gate and up (F, C) and
    /// down (C, F) weights, all int8 with a scale a row or all group-wise int4 (no input order), on this backend; the rows may
    /// then be of any floating-point dtype the backend computes in, and each weight is dequantized as it is read (int8: scale
    /// x value; int4: scale (q - zero) of its group). Once, outside a recorded graph, as the floating-point form.
    /// </summary>
    /// <exception cref="ArgumentException">The lists disagree, a weight is FP8 or has an input order, or lives elsewhere.</exception>
    MoeExpertWeights PrepareMoeExperts(IReadOnlyList<QuantizedWeight> gate, IReadOnlyList<QuantizedWeight> up, IReadOnlyList<QuantizedWeight> down);

    /// <summary>Row-wise softmax of x (N,V) into output (N,V).</summary>
    void Softmax(Tensor x, Tensor output);

    // ---------------------------------------------------------------- embedding

    /// <summary>output (N,C) = table[ids] (or += when <paramref name="accumulate"/>); ids (N) I32, table (V,C).</summary>
    void EmbeddingForward(Tensor ids, Tensor table, Tensor output, bool accumulate = false);

    /// <summary>
    /// output (N,C) = the rows of an int8 or FP8 table (V,C) by ids (N) I32, each dequantized (Scales[id] * Values[id, ·]) into output's
    /// floating-point dtype (or added, when <paramref name="accumulate"/>): the lookup of a quantized embedding table.
    /// </summary>
    void QuantizedEmbeddingForward(Tensor ids, QuantizedWeight table, Tensor output, bool accumulate = false);

    /// <summary>
    /// <see cref="EmbeddingShardForward"/> over an int8 or FP8 shard (V,C) of a vocabulary-parallel table: output (N,C) = the dequantized
    /// row ids - rowOffset for ids in [rowOffset, rowOffset + V), zero for every other id.
    /// </summary>
    void QuantizedEmbeddingShardForward(Tensor ids, QuantizedWeight table, int rowOffset, Tensor output);

    /// <summary>dTable (V,C) += scatter of dOutput (N,C) rows by ids (N).</summary>
    void EmbeddingBackward(Tensor ids, Tensor dOutput, Tensor dTable);

    /// <summary>
    /// Lookup in one shard of a vocabulary-parallel table: output (N,C) = table[ids - rowOffset] for ids in
    /// [rowOffset, rowOffset + V), zero for every other id; table (V,C) holds rows rowOffset .. rowOffset + V - 1 of the whole
    /// table. Summed over the shards (an all-reduce) it is the whole table's lookup (Megatron's VocabParallelEmbedding).
    /// </summary>
    void EmbeddingShardForward(Tensor ids, Tensor table, int rowOffset, Tensor output);

    /// <summary>dTable (V,C) += scatter of dOutput (N,C) rows by ids (N), for the ids in [rowOffset, rowOffset + V) only.</summary>
    void EmbeddingShardBackward(Tensor ids, Tensor dOutput, int rowOffset, Tensor dTable);

    // ---------------------------------------------------------------- normalization

    /// <summary>
    /// output (N,C) = (x - mean) * rstd * weight + bias; saves mean (N) and rstd (N) for backward.
    /// <paramref name="bias"/> may be null.
    /// </summary>
    void LayerNormForward(Tensor x, Tensor weight, Tensor? bias, Tensor output, Tensor mean, Tensor rstd, double epsilon);

    /// <summary>
    /// Accumulates dx (N,C) += dL/dx; dWeight, dBias (C) += their gradients (dBias may be null). When
    /// <paramref name="dxColumnSums"/> (C) is given it receives += the column sums of dx after the accumulation (the values
    /// stored): when dx is the residual-stream gradient, that is the bias gradient of the linear layer whose output
    /// gradient it is, taken without reading dx again. A backend may take it in a wider type than x (F32 for BF16).
    /// </summary>
    void LayerNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd,
        Tensor dx, Tensor dWeight, Tensor? dBias, Tensor? dxColumnSums = null);

    /// <summary>
    /// output (N,C) = x * rstd * scale with rstd = 1/sqrt(mean(x^2) + eps); saves rstd (N). The scale is weight, or with
    /// <paramref name="unitOffset"/> 1 + weight rounded to weight's dtype (Gemma's norms), which gives the bits of forming
    /// that scale in a tensor of its own first.
    /// </summary>
    void RmsNormForward(Tensor x, Tensor weight, Tensor output, Tensor rstd, double epsilon, bool unitOffset = false);

    /// <summary>
    /// accumulator (N,C) += RMSNorm(x) (N,C) by <paramref name="norm"/>: a Gemma block's post-norm and residual add as one op
    /// (the branch normalized, rounded to x's dtype, then added). The result equals <see cref="RmsNormForward"/> into a
    /// tensor of x's dtype followed by <see cref="Accumulate"/>; a device may do both in one launch. Saves nothing
    /// (inference). Both contiguous, of one dtype; they must not overlap.
    /// </summary>
    void AccumulateRmsNorm(Tensor accumulator, Tensor x, RmsNormPrologue norm);

    /// <summary>Accumulates dx (N,C) += dL/dx and dWeight (C) += its gradient.</summary>
    void RmsNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight);

    // ---------------------------------------------------------------- attention

    /// <summary>
    /// Rotary position embedding, in place, on x (B,T,H,D) (last dimension contiguous), the
    /// "rotate half" convention of Hugging Face Llama: pairs (i, i + D/2), angle
    /// (startPosition + t) * invFreq[i] with the frequencies of <paramref name="frequencies"/> at length startPosition + T
    /// (theta^(-2i/D) for a bare theta), cos and sin scaled by its attention factor. <paramref name="inverse"/> rotates by the
    /// negative angle, which is the backward pass (the transpose of the forward map).
    /// </summary>
    void Rope(Tensor x, int startPosition, RopeFrequencies frequencies, bool inverse = false);

    /// <summary>
    /// Causal scaled-dot-product attention with grouped-query heads.
    /// q (B,T,H,D), k and v (B,S,K,D) with H a multiple of K (query head h reads kv head h / (H/K));
    /// output (B,T,H,D) contiguous; logSumExp (B,H,T) saved for backward (may be null at inference).
    /// Query t sits at position S - T + t and sees keys 0 .. S - T + t: S = T in training,
    /// S &gt; T when decoding with a KV cache. Views with a contiguous last dimension are accepted.
    /// <paramref name="window"/> &gt; 0 is a sliding window (Mistral's): a query at position p sees only keys
    /// p - window + 1 .. p (transformers' rule, key j visible when p - window &lt; j &lt;= p); 0 means no window.
    /// <paramref name="softCap"/> &gt; 0 caps each score after the scale: s = softCap tanh(s / softCap) (Gemma 2's
    /// attn_logit_softcapping); 0 means none. A backend whose kernels do not cap refuses a positive cap.
    /// </summary>
    void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor? logSumExp, double scale, int window = 0, double softCap = 0);

    /// <summary>
    /// <see cref="Rope(Tensor, int, RopeFrequencies, bool)"/> at per-sequence positions: row (b, t) of x (B,T,H,D) sits at
    /// position startPositions[b] + t. <paramref name="startPositions"/> (B) I32 lives on this backend (a KV cache's
    /// filled lengths), so a recorded decode step serves every position. Dynamic frequencies take the call's length as
    /// max over b of startPositions[b] + T (transformers' max(position_ids) + 1).
    /// </summary>
    void Rope(Tensor x, Tensor startPositions, RopeFrequencies frequencies);

    /// <summary>
    /// Causal grouped-query attention of T new queries against a KV cache: q (B,T,H,D); keyCache and valueCache
    /// (B,S,K,D) hold S positions, of which sequence b's first startPositions[b] + T are filled (its T new keys
    /// already written, see <see cref="CopyAtPositions"/>); query t sits at position startPositions[b] + t and sees
    /// keys 0 .. startPositions[b] + t (only the last <paramref name="window"/> of them when window &gt; 0). output (B,T,H,D)
    /// contiguous; startPositions (B) I32 on this backend. Views with a contiguous last dimension are accepted for q and the caches.
    /// </summary>
    /// <remarks><paramref name="softCap"/> as in <see cref="AttentionForward"/>.</remarks>
    void AttentionForwardCached(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor output, double scale,
        int window = 0, double softCap = 0);

    /// <summary>
    /// The attention of a decode step and the output product behind it, added to the residual stream as one op, where the
    /// backend fuses it: target (B, C) += o outputWeight^T + outputBias, o (B, H·D) = <see cref="AttentionForwardCached"/> of
    /// q (B, 1, H, D) over keyCache and valueCache (B, S, K, D) at startPositions (B), rounded to q's dtype as that op stores
    /// it; outputWeight (C, H·D). No soft cap. Returns false, having done nothing, where the backend does not fuse the call;
    /// the caller then runs <see cref="AttentionForwardCached"/> and the product. The CPU backend never fuses it; the CUDA
    /// backend does under its FusedDecodeAttentionOutput option.
    /// </summary>
    bool TryAttentionOutputAccumulate(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor outputWeight,
        Tensor? outputBias, Tensor target, double scale, int window = 0);

    /// <summary>
    /// destination[b, startPositions[b] + t, r, :] = source[b, t, r, :] for source (B,T,R,D) and destination (B,S,R,D) of one
    /// dtype, both with a contiguous last dimension: appends new keys and values to a KV cache at each sequence's length.
    /// startPositions (B) I32 on this backend; startPositions[b] + T must not exceed S (unchecked on devices).
    /// </summary>
    void CopyAtPositions(Tensor source, Tensor destination, Tensor startPositions);

    /// <summary>
    /// A decode step's attention prologue as one op: rotates the q and k heads of qkv (B,T,H+2K,D) in place at positions
    /// startPositions[b] + t (<see cref="Rope(Tensor, Tensor, RopeFrequencies)"/> of qkv[:, :, :H+K] with H = <paramref name="queryHeads"/>),
    /// then appends the k and v heads to keysAndValues (B,S,2K,D) at those positions (<see cref="CopyAtPositions"/> of
    /// qkv[:, :, H:]). The result equals those two calls; a device may do both in one launch.
    /// </summary>
    void RopeAndAppend(Tensor qkv, int queryHeads, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies);

    /// <summary>
    /// <see cref="RopeAndAppend"/> after per-head RMS norms (Qwen3's and Gemma 3's q_norm and k_norm): each query head of qkv
    /// (B,T,H+2K,D), contiguous, is RMS-normalized over its D channels by <paramref name="queryNorm"/> (weight (D)) and each key
    /// head by <paramref name="keyNorm"/>, in place, rounded to qkv's dtype as <see cref="RmsNormForward"/> stores them; then
    /// the q and k heads are rotated and the k and v heads appended as <see cref="RopeAndAppend"/> does. The result equals
    /// those calls; a device may do all of it in one launch.
    /// </summary>
    void NormalizeHeadsRopeAndAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies);

    /// <summary>
    /// A decode step's attention input as one op: qkv (B, T, H+2K, D), contiguous, = x W^T + bias for x (B·T, C) and
    /// W ((H+2K)·D, C), x RMS-normalized first when <paramref name="norm"/> is given (<see cref="RmsNormMatMul"/>), then
    /// <see cref="RopeAndAppend"/> of qkv with H = <paramref name="queryHeads"/>. The result equals those calls; a device
    /// may do all of it in one launch.
    /// </summary>
    void MatMulRopeAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies);

    /// <summary>
    /// <see cref="MatMulRopeAppend"/> over a quantized weight: qkv (B, T, H+2K, D), contiguous, = x W^T + bias as
    /// <see cref="QuantizedMatMul"/> computes it (x normalized first when <paramref name="norm"/> is given), then
    /// <see cref="RopeAndAppend"/>. The result equals those calls; a device may do all of it in one launch (the CUDA backend's
    /// int4 and int8 streams at 1 to 4 rows).
    /// </summary>
    void QuantizedMatMulRopeAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies);

    /// <summary>
    /// <see cref="MatMulRopePagedAppend"/> over a quantized weight: qkv (N, H+2K, D), contiguous, = x W^T + bias as
    /// <see cref="QuantizedMatMul"/> computes it (x normalized first when <paramref name="norm"/> is given), then
    /// <see cref="RopePagedAppend"/>. The result equals those calls; a device may do all of it in one launch (the CUDA
    /// backend's int4 and int8 streams at 1 to 4 rows of a 16-bit pool).
    /// </summary>
    void QuantizedMatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null);

    /// <summary>
    /// Appends a step's keys and values to a paged KV cache: pool[slot[n]] = keysAndValues[n] for every row n of
    /// keysAndValues (N, R, D) (last dimension contiguous; typically the k and v heads of a fused QKV activation, R = 2K)
    /// into pool (Blocks, BlockSize, R, D) of the same dtype, slots from <paramref name="batch"/>.Slots (N); rows whose slot
    /// is negative write nothing. Slots must be below Blocks * BlockSize (unchecked on devices).
    /// An I8 pool (<see cref="PagedKvPool"/>) takes <paramref name="poolScales"/> (Blocks, BlockSize, R) F32, required iff the
    /// pool is I8: each (row, head) of D values is quantized on the way in (<see cref="Int8Quantization.QuantizeRow"/>: scale
    /// max|x| / 127 to poolScales[slot, r], round-to-nearest-even of x · 127 / max|x| clamped to [-127, 127] to pool[slot, r]).
    /// </summary>
    void PagedAppend(Tensor keysAndValues, Tensor pool, PagedBatch batch, Tensor? poolScales = null);

    /// <summary>
    /// A paged step's attention prologue after its QKV product (serving's counterpart of <see cref="RopeAndAppend"/>): rotates
    /// the q and k heads of qkv (N, H+2K, D), contiguous, in place at <paramref name="positions"/> (N) I32
    /// (<see cref="Rope(Tensor, Tensor, RopeFrequencies)"/> of qkv viewed as (N, 1, H+K, D), H = <paramref name="queryHeads"/>),
    /// then <see cref="PagedAppend"/> of the k and v heads into pool (Blocks, BlockSize, 2K, D) at <paramref name="batch"/>.Slots.
    /// The result equals those two calls; a device may do both in one launch (the path of a QKV product that
    /// <see cref="MatMulRopePagedAppend"/> cannot take: quantized weights, adapters). An I8 or FP8 pool takes
    /// <paramref name="poolScales"/> as <see cref="PagedAppend"/> does.
    /// </summary>
    void RopePagedAppend(Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies,
        Tensor? poolScales = null);

    /// <summary>
    /// <see cref="RopePagedAppend"/> after per-head RMS norms (serving's counterpart of <see cref="NormalizeHeadsRopeAndAppend"/>,
    /// Qwen3 and Gemma 3): each query head of qkv (N, H+2K, D), contiguous, RMS-normalized over its D channels by
    /// <paramref name="queryNorm"/> and each key head by <paramref name="keyNorm"/>, in place, rounded to qkv's dtype as
    /// <see cref="RmsNormForward"/> stores them; then <see cref="RopePagedAppend"/>. The result equals those calls; a device may
    /// do all of it in one launch.
    /// </summary>
    void NormalizeHeadsRopePagedAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm, Tensor pool,
        Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null);

    /// <summary>
    /// A paged step's attention input as one op (serving's counterpart of <see cref="MatMulRopeAppend"/>): qkv (N, H+2K, D),
    /// contiguous, = x W^T + bias for x (N, C) and W ((H+2K)·D, C), x RMS-normalized first when <paramref name="norm"/> is
    /// given; then the q and k heads rotated in place at <paramref name="positions"/> (N) I32 (<see cref="Rope(Tensor, Tensor, RopeFrequencies)"/>
    /// of qkv viewed as (N, 1, H+K, D)), then <see cref="PagedAppend"/> of the k and v heads into pool (Blocks, BlockSize, 2K, D)
    /// at <paramref name="batch"/>.Slots. The result equals those calls; a device may do all of it in one launch (a decode
    /// step's few rows), so that a paged decode layer launches no more kernels than a dense one. An I8 pool takes
    /// <paramref name="poolScales"/> as <see cref="PagedAppend"/> does.
    /// </summary>
    void MatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null);

    /// <summary>
    /// Causal grouped-query attention of a flattened batch over a paged KV cache: q (N, H, D) (last dimension contiguous),
    /// pool (Blocks, BlockSize, 2K, D) holding K key heads then K value heads per position (the step's keys already appended
    /// with <see cref="PagedAppend"/>), output (N, H, D) contiguous. Row n of sequence b (see <see cref="PagedBatch"/>) sits
    /// at position p = ContextLengths[b] - rows(b) + (n - QueryStarts[b]) and attends to that sequence's positions 0 .. p,
    /// read through its block table; query head h reads kv head h / (H / K). A row with p &lt; 0 (padding) gets zeros.
    /// <paramref name="window"/> &gt; 0 is a sliding window as in <see cref="AttentionForward"/>: the row sees positions
    /// p - window + 1 .. p only, and a block wholly left of the window of every row of its sequence is neither read nor
    /// looked up in the block table (a bounded cache returns it to the pool; its entry may hold anything, e.g. -1).
    /// An I8 pool takes <paramref name="poolScales"/> (Blocks, BlockSize, 2K) F32, required iff the pool is I8, and attention
    /// reads key and value heads as poolScales[slot, r] x pool[slot, r, ·] (dequantized on read): the result is that of a
    /// pool of q's dtype holding those values.
    /// </summary>
    /// <remarks><paramref name="softCap"/> as in <see cref="AttentionForward"/>.</remarks>
    void PagedAttention(Tensor q, Tensor pool, PagedBatch batch, Tensor output, double scale, int window = 0, Tensor? poolScales = null,
        double softCap = 0);

    /// <summary>
    /// Input ids of a step enqueued before the previous step's sampled tokens reached the host (asynchronous scheduling):
    /// in place, ids[n] = sampled[-ids[n] - 1] where ids[n] is negative, unchanged otherwise; ids (N) and sampled (M) I32
    /// contiguous on this backend, every -ids[n] - 1 below M (unchecked on devices).
    /// </summary>
    void ResolveSampledIds(Tensor ids, Tensor sampled);

    /// <summary>positions (B,T) I32 = startPositions[b] + t (learned-position ids after a KV cache's filled length).</summary>
    void FillPositions(Tensor startPositions, Tensor positions);

    /// <summary>counters (contiguous I32) += amount.</summary>
    void Increment(Tensor counters, int amount);

    /// <summary>
    /// Gradients of <see cref="AttentionForward"/> (S = T): writes dq (B,T,H,D), dk and dv (B,T,K,D),
    /// summing over the query heads that share a kv head. Views with a contiguous last dimension are accepted.
    /// <paramref name="window"/> as in <see cref="AttentionForward"/>. When <paramref name="columnSums"/> ((H + 2K) D,
    /// contiguous) is given it receives += the sums over the B T rows of dq's H D columns, then dk's K D, then dv's K D: the
    /// bias gradient of the product that made q, k and v in one (B, T, (H + 2K) D) tensor, taken on the way where the
    /// backend's kernels can (the Hopper backward), so that the product's backward need not read dq, dk and dv again. dk's
    /// sums are zero up to rounding (a key bias adds the same q·b to every logit of a query, which softmax ignores), and a
    /// backend may add exactly zero for them; dv's equal dOutput's sums over each kv head's query heads (a query's
    /// probabilities sum to 1), and a backend may take them from dOutput.
    /// </summary>
    void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor dOutput, Tensor logSumExp,
        Tensor dq, Tensor dk, Tensor dv, double scale, int window = 0, Tensor? columnSums = null, double softCap = 0);

    // ---------------------------------------------------------------- loss

    /// <summary>
    /// Fused softmax cross-entropy over logits (N,V) and targets (N) I32: losses (N) = -log softmax[target].
    /// logits and dLogits may be row-strided (N,V) views with a contiguous last dimension (the first V columns of padded logits).
    /// When <paramref name="dLogits"/> is given it receives (softmax - onehot) * lossScale; it may alias
    /// <paramref name="logits"/>. Rows whose target is negative are ignored: loss 0, gradient 0.
    /// </summary>
    void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor? dLogits, double lossScale);

    /// <summary>
    /// The per-row statistics of one shard of a vocabulary-parallel softmax cross-entropy: for logits (N,V) (the columns
    /// [columnOffset, columnOffset + V) of the whole vocabulary; a row-strided view with a contiguous last dimension is
    /// accepted) and targets (N) I32 (whole-vocabulary ids; negative: ignored), statistics (N,3) F32 (F64 for F64 logits)
    /// receives per row the maximum m of the first <paramref name="validColumns"/> columns, the sum of exp(logit - m) over
    /// them, and the target's logit when the target lies in this shard's valid columns, else 0. Columns from
    /// validColumns on are vocabulary padding and take no part.
    /// </summary>
    void CrossEntropyStatistics(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor statistics);

    /// <summary>
    /// Combines the statistics of every shard, statistics (P,N,3) as <see cref="CrossEntropyStatistics"/> wrote them in
    /// shard order, into the whole vocabulary's log-sum-exp (N) = M + log(sum_p s_p exp(m_p - M)) with M = max_p m_p, and
    /// losses (N) = logSumExp - sum_p t_p; rows whose target is negative get loss 0. losses and logSumExp have the
    /// statistics' dtype. Every shard combining the same statistics gets the same bits.
    /// </summary>
    void CrossEntropyCombine(Tensor statistics, Tensor targets, Tensor losses, Tensor logSumExp);

    /// <summary>
    /// The gradient of one shard of a vocabulary-parallel cross-entropy: dLogits (N,V) = (exp(logit - logSumExp) - [column ==
    /// target - columnOffset]) * lossScale on the first <paramref name="validColumns"/> columns, 0 on the padding columns and on
    /// rows whose target is negative. <paramref name="dLogits"/> may alias <paramref name="logits"/>; both may be row-strided.
    /// </summary>
    void CrossEntropyGradient(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor logSumExp, Tensor dLogits, double lossScale);

    /// <summary>
    /// indices (N) I32 = the column of the largest value in each row of x (N,V) (a row-strided view with a contiguous last
    /// dimension is accepted); the lowest column on ties, as <c>torch.argmax</c>. Greedy decoding on the device.
    /// </summary>
    void ArgMax(Tensor x, Tensor indices);

    /// <summary>
    /// ids (M) I32 = the token drawn from each row of logits (M, V) (a row-strided view with a contiguous last dimension is
    /// accepted) by <see cref="TokenSampling"/>'s rule, a pure function of the row and its parameters: parameters (M,
    /// <see cref="TokenSampling.ParameterColumns"/>) I32 as <see cref="TokenSampling.WriteParameters"/> writes them
    /// (temperature, top-k, top-p, seed), positions (M) I32 the position each drawn token will take. A row of temperature 0
    /// is the argmax. Sampling on the device: only the ids go back to the host. <paramref name="temperatureOnly"/>: the caller
    /// knows that no row has a top-k below its candidates or a top-p below 1, so a backend may choose its kernel for the plain
    /// Gumbel draw (CUDA does at many rows); the tokens are the same either way, and a wrong promise costs only time.
    /// </summary>
    void SampleRows(Tensor logits, Tensor parameters, Tensor positions, Tensor ids, bool temperatureOnly = false);

    /// <summary>
    /// The log-probabilities OpenAI's logprobs report, on the device, for each row r of logits (M, V) (a row-strided view with a
    /// contiguous last dimension is accepted): logprobs[r, 0] = log softmax(row r)[ids[r]], and for j &lt;
    /// <paramref name="count"/> topIds[r, j] = the column of the row's (j+1)-th largest logit (the lower column first on
    /// ties) and logprobs[r, 1 + j] its log-probability (<see cref="LogProbabilities"/>, NaN skipped). ids (M) I32, logprobs
    /// (M, 1 + count) F32, topIds (M, count) I32 or null when <paramref name="count"/> is 0.
    /// </summary>
    void TokenLogprobs(Tensor logits, Tensor ids, int count, Tensor logprobs, Tensor? topIds);

    /// <summary>
    /// x[r, columns[e]] += values[e] for every row r of x (M, V) F32 and e in [starts[r], starts[r + 1]): OpenAI's penalties
    /// and logit_bias on the device, each added once in F32 as the host adds them. starts (M + 1) I32, columns (A) I32 and
    /// values (A) F32 with A at least starts[M]; a row's columns must be distinct (its entries are added in parallel), so a
    /// column with two terms is given in two calls, in the order the host adds them.
    /// </summary>
    void AddToColumns(Tensor x, Tensor starts, Tensor columns, Tensor values);

    /// <summary>result (scalar) = scale * sum(x) (or += when <paramref name="accumulate"/>).</summary>
    void Sum(Tensor x, Tensor result, double scale = 1.0, bool accumulate = false);

    // ---------------------------------------------------------------- optimizer

    /// <summary>result (scalar) += sum(x^2): the pieces of a global gradient norm, kept on the device.</summary>
    void SumOfSquares(Tensor x, Tensor result);

    /// <summary>
    /// One AdamW step over a contiguous range (typically an arena slice), with decoupled weight decay:
    /// g = grad * clip; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd * p).
    /// clip = min(1, maxNorm / (sqrt(gradSumOfSquares) + 1e-6)) when <paramref name="gradSumOfSquares"/> (scalar) is given
    /// (PyTorch's clip_grad_norm_ coefficient, so runs match it to rounding).
    /// When <paramref name="lowPrecisionCopy"/> is given it receives the updated parameters cast to its dtype
    /// (bf16 compute weights beside f32 masters).
    /// </summary>
    void AdamW(Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step,
        Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null);

    /// <summary>
    /// <see cref="AdamW"/> over several <paramref name="ranges"/> of the same flat (n) arrays at once: each range's elements
    /// updated exactly as one <see cref="AdamW"/> call on its slices would, with <paramref name="step"/>'s weight decay where
    /// the range has <see cref="AdamWRange.WeightDecay"/> and 0 elsewhere. Ranges are sorted, disjoint and within the arrays.
    /// A backend may do it in one launch (the CUDA backend does); this default calls <see cref="AdamW"/> range by range.
    /// </summary>
    void AdamWRanges(Tensor parameters, Tensor gradients, Tensor m, Tensor v, IReadOnlyList<AdamWRange> ranges, in AdamWStep step,
        Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null)
    {
        AdamWRange.Validate(ranges, parameters.NumElements);
        this.AdamWRangeByRange(parameters, gradients, m, v, ranges, step, gradSumOfSquares, lowPrecisionCopy);
    }

    /// <summary>
    /// <see cref="AdamW"/> over split F32 masters (<see cref="SplitMasters"/>): each master is joined from its BF16 high half
    /// <paramref name="values"/> (what layers read) and its 16-bit low word <paramref name="lowWords"/>, updated with exactly
    /// <see cref="AdamW"/>'s operations, and split back into both. The joined masters, m and v are bitwise those of
    /// <see cref="AdamW"/> on separate F32 masters; <paramref name="values"/> is the master rounded half away from zero
    /// (round to nearest even except at exact ties).
    /// </summary>
    /// <param name="values">(n) BF16, contiguous: the high halves of the masters, updated in place.</param>
    /// <param name="lowWords">(n) U16, contiguous: the low words of the masters, updated in place.</param>
    /// <param name="gradients">(n) BF16 (or F32), contiguous.</param>
    /// <param name="m">(n) F32 first moments.</param>
    /// <param name="v">(n) F32 second moments.</param>
    /// <param name="step">Hyper-parameters, as for <see cref="AdamW"/>.</param>
    /// <param name="gradSumOfSquares">(1) F32 global gradient sum of squares for clipping, or null, as for <see cref="AdamW"/>.</param>
    void AdamWSplit(Tensor values, Tensor lowWords, Tensor gradients, Tensor m, Tensor v, in AdamWStep step, Tensor? gradSumOfSquares = null);

    /// <summary>
    /// Splits F32 masters exactly into a BF16 high half and a 16-bit low word: with u the master's bits,
    /// hi = (u + 0x8000) &gt;&gt; 16 (the master rounded half away from zero in magnitude) and lo = (u - (hi &lt;&lt; 16)) as a
    /// signed 16-bit integer, always in [-0x8000, 0x7FFF]; <see cref="JoinMasters"/> gives u back bit for bit (integer
    /// arithmetic mod 2^32, so for every bit pattern). Out of scope: masters whose magnitude rounds past BF16's largest finite
    /// value (the BF16 value the layers read becomes infinity) and NaNs with bits at or above 0xFFFF8000 (the value wraps to
    /// +0); the joined master stays exact for them too.
    /// </summary>
    /// <param name="masters">(n) F32, contiguous.</param>
    /// <param name="values">(n) BF16, contiguous: receives the high halves.</param>
    /// <param name="lowWords">(n) U16, contiguous: receives the low words (two's-complement int16 bits).</param>
    void SplitMasters(Tensor masters, Tensor values, Tensor lowWords);

    /// <summary>masters (n) F32 = bits (hi &lt;&lt; 16) + (int16)lo, mod 2^32: the inverse of <see cref="SplitMasters"/>, exact.</summary>
    /// <param name="values">(n) BF16, contiguous: the high halves.</param>
    /// <param name="lowWords">(n) U16, contiguous: the low words.</param>
    /// <param name="masters">(n) F32, contiguous: receives the joined masters.</param>
    void JoinMasters(Tensor values, Tensor lowWords, Tensor masters);
}
