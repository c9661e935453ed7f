using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// The LM head's product and the softmax cross-entropy, fused over chunks of rows (Liger-Kernel's fused linear
/// cross-entropy): for each chunk of R rows of x, the logits (R, V) = x W^T, the loss of each row and, in the logits' place,
/// their gradient (softmax - onehot) * lossScale; then at once the chunk's input gradient dx = dlogits W and the weight's
/// dW += dlogits^T x. Only one chunk's logits exist at a time, so neither the (N, V) logits nor a V-sized gradient per row
/// outlive their chunk: memory for the head goes from N·V to R·V elements plus dx (N, C), and no tensor ever holds N·V
/// elements (the 2^31 elements of a buffer no longer bound the micro-batch).
/// <para>
/// The arithmetic is the unfused head's, op for op, on row slices: <see cref="Linear.Forward"/>'s product,
/// <see cref="IBackend.CrossEntropy"/> (or the <see cref="VocabParallelCrossEntropy"/> under tensor parallelism, whose per-row
/// statistics are all-gathered per chunk), <see cref="Linear.Backward(in PassContext, Tensor, Tensor?, bool, Tensor?, Tensor?, bool)"/>'s
/// two products. Only the weight gradient's sum over rows is split: it accumulates chunk by chunk (beta = 1), as
/// micro-batches do, which in BF16 rounds the gradient once per chunk instead of once per micro-batch.
/// </para>
/// <para>
/// The gradient is taken at the loss, not at the backward pass: the caller must have begun the head's backward (ZeRO-3 binds
/// its gradient buffers then) before a call that asks for gradients.
/// </para>
/// </summary>
public sealed class FusedLinearCrossEntropy
{
    /// <summary>The default budget of one chunk's logits, in elements (512 MiB in BF16).</summary>
    public const long DefaultChunkElements = 1L << 28;

    private readonly ActivationKey _logits, _padding;

    /// <summary>
    /// The loss of <paramref name="head"/> (W (V, C), this rank's columns of the vocabulary under tensor parallelism) over a
    /// vocabulary of <paramref name="vocabulary"/> real ids; columns past it pad the vocabulary and get no gradient.
    /// <paramref name="vocabularyParallel"/> is the vocabulary-parallel loss when the head is column-parallel, else null.
    /// </summary>
    public FusedLinearCrossEntropy(Linear head, int vocabulary, VocabParallelCrossEntropy? vocabularyParallel = null)
    {
        ArgumentNullException.ThrowIfNull(head);
        if (vocabularyParallel is null && (vocabulary <= 0 || vocabulary > head.OutFeatures))
            throw new ArgumentOutOfRangeException(nameof(vocabulary), $"{head.Name}: vocabulary ({vocabulary}) must lie in [1, {head.OutFeatures}] (the head's rows)");
        if (vocabularyParallel is not null && vocabularyParallel.LocalColumns != head.OutFeatures)
            throw new ArgumentException($"{head.Name}: the vocabulary-parallel loss expects {vocabularyParallel.LocalColumns} columns per rank, the head has {head.OutFeatures}");
        Head = head;
        Vocabulary = vocabulary;
        VocabularyParallel = vocabularyParallel;
        _logits = new ActivationKey(head.Name + ".loss.chunk");
        _padding = new ActivationKey(head.Name + ".loss.padding");
    }

    /// <summary>The LM head whose product this fuses.</summary>
    public Linear Head { get; }

    /// <summary>Real vocabulary ids (the whole vocabulary, also under tensor parallelism).</summary>
    public int Vocabulary { get; }

    /// <summary>The vocabulary-parallel loss, or null on one device.</summary>
    public VocabParallelCrossEntropy? VocabularyParallel { get; }

    /// <summary>
    /// The most rows whose logits over <paramref name="columns"/> columns fit in <paramref name="chunkElements"/> elements
    /// (at least one row): the default chunk of a head with that many columns.
    /// </summary>
    public static int DefaultChunkRows(int columns, long chunkElements = DefaultChunkElements)
    {
        if (columns <= 0) throw new ArgumentOutOfRangeException(nameof(columns), $"fused linear cross-entropy: {columns} columns");
        if (chunkElements <= 0) throw new ArgumentOutOfRangeException(nameof(chunkElements), $"fused linear cross-entropy: a chunk of {chunkElements} elements");
        return (int)Math.Clamp(chunkElements / columns, 1, int.MaxValue);
    }

    /// <summary>
    /// The rows of each chunk when <paramref name="rows"/> rows are split into chunks of at most <paramref name="maxRows"/>:
    /// as many chunks as needed, of equal size (rounded up to a multiple of 8 rows where that stays within the limit, so that
    /// chunk boundaries keep 16-byte alignment), the last one smaller.
    /// </summary>
    public static int ChunkRows(int rows, int maxRows)
    {
        if (maxRows <= 0) throw new ArgumentOutOfRangeException(nameof(maxRows), $"fused linear cross-entropy: chunks of {maxRows} rows; give a positive number of rows");
        if (rows <= maxRows) return Math.Max(rows, 1);
        int chunks = (int)(((long)rows + maxRows - 1) / maxRows);
        int even = (int)(((long)rows + chunks - 1) / chunks);
        return Math.Min(maxRows, (even + 7) / 8 * 8);
    }

    /// <summary>
    /// losses (N) = -log softmax(x W^T + b)[target] for x (N, C) and targets (N) I32 (negative: ignored, loss 0), computed
    /// <paramref name="maxChunkRows"/> rows at a time. When <paramref name="dx"/> (N, C) is given, it receives
    /// d(lossScale · sum of losses)/dx (a partial sum over this rank's columns under tensor parallelism, which the head's
    /// input region reduces) and the head's weight (and bias) gradients accumulate; otherwise nothing but the losses is written.
    /// </summary>
    public void Forward(in PassContext ctx, Tensor x, Tensor targets, Tensor losses, double lossScale, Tensor? dx, int maxChunkRows)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(targets); ArgumentNullException.ThrowIfNull(losses);
        string name = Head.Name;
        if (x.Rank != 2 || x.Size(1) != Head.InFeatures || !x.IsContiguous)
            throw new ArgumentException($"{name}: input {x.Shape} must be contiguous (N, {Head.InFeatures})");
        int n = x.Size(0), columns = Head.OutFeatures;
        if (targets.Shape != new Shape(n) || losses.Shape != new Shape(n))
            throw new ArgumentException($"{name}: targets {targets.Shape} and losses {losses.Shape} must be ({n}), one per row of the input {x.Shape}");
        if (dx is not null && (dx.Shape != x.Shape || !dx.IsContiguous))
            throw new ArgumentException($"{name}: input gradient {dx.Shape} must be contiguous and shaped as the input {x.Shape}");
        var backend = x.Backend;
        // A frozen int8 head (LoRA over a quantized base): the logits from the int8 weight, dx through one dequantized copy.
        var quantized = Head.Weight.Quantized;
        var weight = quantized is null ? Head.Weight.Value : null;           // (V, C)
        int rows = ChunkRows(n, maxChunkRows);
        try
        {
        for (int start = 0; start < n; start += rows)
        {
            int r = Math.Min(rows, n - start);
            var xc = x.Slice(0, start, r);                                   // (R, C)
            var tc = targets.Slice(0, start, r);                             // (R)
            var lc = losses.Slice(0, start, r);                              // (R)
            var logits = ctx.Scratch(_logits, new Shape(r, columns), x.DType);   // (R, V): the chunk's logits, then their gradient
            if (quantized is null) backend.MatMul(xc, weight!, logits, transposeB: true, bias: Head.Bias?.Value);
            else backend.QuantizedMatMul(xc, quantized, logits, bias: Head.Bias?.Value);
            if (VocabularyParallel is not null)
            {
                VocabularyParallel.Forward(ctx, logits, tc, lc, lossScale);  // one all-gather of (tp, R, 3) statistics
            }
            else if (Vocabulary == columns)
            {
                backend.CrossEntropy(logits, tc, lc, dx is null ? null : logits, lossScale);
            }
            else
            {
                var real = logits.Slice(1, 0, Vocabulary);                  // (R, V), rows Vpad apart
                backend.CrossEntropy(real, tc, lc, dx is null ? null : real, lossScale);
                if (dx is not null)
                {
                    var zeros = ctx.Scratch(_padding, new Shape(r, columns - Vocabulary), x.DType);
                    backend.Fill(zeros, 0);
                    backend.Copy(zeros, logits.Slice(1, Vocabulary, columns - Vocabulary));
                }
            }
            if (dx is null) continue;
            if (weight is null)
            {
                var w = backend.Allocate(quantized!.Shape, x.DType);
                backend.Dequantize(quantized, w);
                weight = w;
            }
            backend.MatMul(logits, weight, dx.Slice(0, start, r));          // dx (R, C) = dlogits W
            if (!Head.Weight.RequiresGradient) continue;                   // a frozen head (LoRA): dx only
            if (Head.Bias is null) backend.MatMul(logits, xc, Head.Weight.Grad, transposeA: true, beta: 1.0);
            else backend.MatMul(logits, xc, Head.Weight.Grad, transposeA: true, beta: 1.0, epilogue: MatMulEpilogue.BiasGradient, biasGradient: Head.Bias.Grad);
        }
        }
        finally
        {
            if (quantized is not null) weight?.Storage.Dispose();
        }
    }
}
