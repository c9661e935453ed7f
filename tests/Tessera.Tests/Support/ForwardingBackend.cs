using Tessera.Tensors;

namespace Tessera.Tests.Support;

/// <summary>
/// An <see cref="IBackend"/> that hands every op to <see cref="Inner"/>, for tests that change what one op does and keep the
/// rest (e.g. a KV cache that holds what an int8 cache stands for). Tensors are the inner backend's. Every member is virtual;
/// the list follows IBackend's declaration order (a member IBackend gains is a compile error here until it is added).
/// </summary>
internal class ForwardingBackend(IBackend inner) : IBackend
{
    /// <summary>The backend that runs the ops.</summary>
    public IBackend Inner { get; } = inner ?? throw new ArgumentNullException(nameof(inner));

    public Device Device => Inner.Device;
    public virtual Tensor Allocate(Shape shape, DType dtype) => Inner.Allocate(shape, dtype);
    public virtual void CopyFromHost<T>(ReadOnlySpan<T> source, Tensor destination) where T : unmanaged => Inner.CopyFromHost<T>(source, destination);
    public virtual void CopyToHost<T>(Tensor source, Span<T> destination) where T : unmanaged => Inner.CopyToHost<T>(source, destination);
    public virtual void Copy(Tensor source, Tensor destination) => Inner.Copy(source, destination);
    public virtual void Fill(Tensor tensor, double value) => Inner.Fill(tensor, value);
    public virtual void Synchronize() => Inner.Synchronize();
    public virtual void MatMul(Tensor a, Tensor b, Tensor c, bool transposeA = false, bool transposeB = false, double alpha = 1.0, double beta = 0.0, Tensor? bias = null, MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? biasGradient = null, Tensor? addend = null) => Inner.MatMul(a, b, c, transposeA, transposeB, alpha, beta, bias, epilogue, auxiliary, biasGradient, addend);
    public virtual void SumRows(Tensor x, Tensor sums) => Inner.SumRows(x, sums);
    public virtual void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null, MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null, RmsNormPrologue? norm = null) => Inner.QuantizedMatMul(x, weight, y, beta, bias, epilogue, auxiliary, addend, norm);
    public virtual void Dequantize(QuantizedWeight weight, Tensor output) => Inner.Dequantize(weight, output);
    public virtual void GatherColumns(Tensor x, Tensor indices, Tensor output) => Inner.GatherColumns(x, indices, output);
    public virtual void Add(Tensor a, Tensor b, Tensor output) => Inner.Add(a, b, output);
    public virtual void Accumulate(Tensor accumulator, Tensor x, double alpha = 1.0) => Inner.Accumulate(accumulator, x, alpha);
    public virtual void Multiply(Tensor a, Tensor b, Tensor output) => Inner.Multiply(a, b, output);
    public virtual void Scale(Tensor x, double factor) => Inner.Scale(x, factor);
    public virtual void SoftCap(Tensor x, double cap) => Inner.SoftCap(x, cap);
    public virtual void SoftCapBackward(Tensor y, Tensor dy, double cap) => Inner.SoftCapBackward(y, dy, cap);
    public virtual void GeluForward(Tensor x, Tensor output) => Inner.GeluForward(x, output);
    public virtual void GeluBackward(Tensor x, Tensor dOutput, Tensor dx) => Inner.GeluBackward(x, dOutput, dx);
    public virtual void SwiGluForward(Tensor gate, Tensor up, Tensor output) => Inner.SwiGluForward(gate, up, output);
    public virtual void SwiGluBackward(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp) => Inner.SwiGluBackward(gate, up, dOutput, dGate, dUp);
    public virtual void QuantizedMatMulSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias = null, Tensor? upBias = null, RmsNormPrologue? norm = null) => Inner.QuantizedMatMulSwiGlu(x, gate, up, output, gateBias, upBias, norm);
    // Composed through this backend's own MatMul and SwiGluForward, so that a subclass watching or altering those sees the MLP's
    // gate/up product as it did before the op existed.
    public virtual void GateUpSwiGlu(Tensor x, Tensor gateUpWeight, Tensor gateUp, Tensor activated) => GateUpSwiGluComposition.Apply(this, x, gateUpWeight, gateUp, activated);
    public virtual void DownSwiGluBackward(Tensor dOutput, Tensor downWeight, Tensor gateUp, Tensor dGateUp, Tensor dActivated) =>
        DownSwiGluBackwardComposition.Apply(this, dOutput, downWeight, gateUp, dGateUp, dActivated);
    public virtual void MatMulSwiGlu(Tensor x, Tensor gateWeight, Tensor upWeight, Tensor output, Tensor? gateBias = null, Tensor? upBias = null, RmsNormPrologue? norm = null, bool geluGate = false) => Inner.MatMulSwiGlu(x, gateWeight, upWeight, output, gateBias, upBias, norm, geluGate);
    public virtual bool TryAttentionOutputAccumulate(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor outputWeight, Tensor? outputBias, Tensor target, double scale, int window = 0) => Inner.TryAttentionOutputAccumulate(q, keyCache, valueCache, startPositions, outputWeight, outputBias, target, scale, window);
    public virtual void RmsNormMatMul(Tensor x, RmsNormPrologue norm, Tensor weight, Tensor output, Tensor? bias = null) => Inner.RmsNormMatMul(x, norm, weight, output, bias);
    public virtual void MoeRoute(Tensor logits, Tensor expertIds, Tensor weights, bool normalize) => Inner.MoeRoute(logits, expertIds, weights, normalize);
    public virtual void MoeAlign(Tensor expertIds, Tensor offsets, Tensor slots) => Inner.MoeAlign(expertIds, offsets, slots);
    public virtual void MoeExpertSwiGlu(Tensor x, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor hidden) => Inner.MoeExpertSwiGlu(x, experts, offsets, slots, hidden);
    public virtual void MoeExpertDown(Tensor hidden, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor expertOutput) => Inner.MoeExpertDown(hidden, experts, offsets, slots, expertOutput);
    public virtual void MoeCombine(Tensor expertOutput, Tensor weights, Tensor output, Tensor? shared = null, Tensor? sharedGateLogits = null) => Inner.MoeCombine(expertOutput, weights, output, shared, sharedGateLogits);
    public virtual MoeExpertWeights PrepareMoeExperts(IReadOnlyList<Tensor> gate, IReadOnlyList<Tensor> up, IReadOnlyList<Tensor> down) => Inner.PrepareMoeExperts(gate, up, down);
    public virtual MoeExpertWeights PrepareMoeExperts(IReadOnlyList<QuantizedWeight> gate, IReadOnlyList<QuantizedWeight> up, IReadOnlyList<QuantizedWeight> down) => Inner.PrepareMoeExperts(gate, up, down);
    public virtual void Softmax(Tensor x, Tensor output) => Inner.Softmax(x, output);
    public virtual void EmbeddingForward(Tensor ids, Tensor table, Tensor output, bool accumulate = false) => Inner.EmbeddingForward(ids, table, output, accumulate);
    public virtual void QuantizedEmbeddingForward(Tensor ids, QuantizedWeight table, Tensor output, bool accumulate = false) => Inner.QuantizedEmbeddingForward(ids, table, output, accumulate);
    public virtual void QuantizedEmbeddingShardForward(Tensor ids, QuantizedWeight table, int rowOffset, Tensor output) => Inner.QuantizedEmbeddingShardForward(ids, table, rowOffset, output);
    public virtual void EmbeddingBackward(Tensor ids, Tensor dOutput, Tensor dTable) => Inner.EmbeddingBackward(ids, dOutput, dTable);
    public virtual void EmbeddingShardForward(Tensor ids, Tensor table, int rowOffset, Tensor output) => Inner.EmbeddingShardForward(ids, table, rowOffset, output);
    public virtual void EmbeddingShardBackward(Tensor ids, Tensor dOutput, int rowOffset, Tensor dTable) => Inner.EmbeddingShardBackward(ids, dOutput, rowOffset, dTable);
    public virtual void LayerNormForward(Tensor x, Tensor weight, Tensor? bias, Tensor output, Tensor mean, Tensor rstd, double epsilon) => Inner.LayerNormForward(x, weight, bias, output, mean, rstd, epsilon);
    public virtual void LayerNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor dx, Tensor dWeight, Tensor? dBias, Tensor? dxColumnSums = null) => Inner.LayerNormBackward(dOutput, x, weight, mean, rstd, dx, dWeight, dBias, dxColumnSums);
    public virtual void RmsNormForward(Tensor x, Tensor weight, Tensor output, Tensor rstd, double epsilon, bool unitOffset = false) => Inner.RmsNormForward(x, weight, output, rstd, epsilon, unitOffset);
    public virtual void AccumulateRmsNorm(Tensor accumulator, Tensor x, RmsNormPrologue norm) => Inner.AccumulateRmsNorm(accumulator, x, norm);
    public virtual void RmsNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight) => Inner.RmsNormBackward(dOutput, x, weight, rstd, dx, dWeight);
    public virtual void Rope(Tensor x, int startPosition, RopeFrequencies frequencies, bool inverse = false) => Inner.Rope(x, startPosition, frequencies, inverse);
    public virtual void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor? logSumExp, double scale, int window = 0, double softCap = 0) => Inner.AttentionForward(q, k, v, output, logSumExp, scale, window, softCap);
    public virtual void Rope(Tensor x, Tensor startPositions, RopeFrequencies frequencies) => Inner.Rope(x, startPositions, frequencies);
    public virtual void AttentionForwardCached(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor output, double scale, int window = 0, double softCap = 0) => Inner.AttentionForwardCached(q, keyCache, valueCache, startPositions, output, scale, window, softCap);
    public virtual void CopyAtPositions(Tensor source, Tensor destination, Tensor startPositions) => Inner.CopyAtPositions(source, destination, startPositions);
    public virtual void RopeAndAppend(Tensor qkv, int queryHeads, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies) => Inner.RopeAndAppend(qkv, queryHeads, keysAndValues, startPositions, frequencies);
    public virtual void NormalizeHeadsRopePagedAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null) => Inner.NormalizeHeadsRopePagedAppend(qkv, queryHeads, queryNorm, keyNorm, pool, positions, batch, frequencies, poolScales);
    public virtual void NormalizeHeadsRopeAndAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies) => Inner.NormalizeHeadsRopeAndAppend(qkv, queryHeads, queryNorm, keyNorm, keysAndValues, startPositions, frequencies);
    public virtual void MatMulRopeAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies) => Inner.MatMulRopeAppend(x, norm, weight, bias, qkv, queryHeads, keysAndValues, startPositions, frequencies);
    public virtual void PagedAppend(Tensor keysAndValues, Tensor pool, PagedBatch batch, Tensor? poolScales = null) => Inner.PagedAppend(keysAndValues, pool, batch, poolScales);
    public virtual void RopePagedAppend(Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null) => Inner.RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
    public virtual void QuantizedMatMulRopeAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies) => Inner.QuantizedMatMulRopeAppend(x, norm, weight, bias, qkv, queryHeads, keysAndValues, startPositions, frequencies);
    public virtual void QuantizedMatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null) => Inner.QuantizedMatMulRopePagedAppend(x, norm, weight, bias, qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
    public virtual void MatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null) => Inner.MatMulRopePagedAppend(x, norm, weight, bias, qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
    public virtual void PagedAttention(Tensor q, Tensor pool, PagedBatch batch, Tensor output, double scale, int window = 0, Tensor? poolScales = null, double softCap = 0) => Inner.PagedAttention(q, pool, batch, output, scale, window, poolScales, softCap);
    public virtual void ResolveSampledIds(Tensor ids, Tensor sampled) => Inner.ResolveSampledIds(ids, sampled);
    public virtual void FillPositions(Tensor startPositions, Tensor positions) => Inner.FillPositions(startPositions, positions);
    public virtual void Increment(Tensor counters, int amount) => Inner.Increment(counters, amount);
    public virtual void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor dOutput, Tensor logSumExp, Tensor dq, Tensor dk, Tensor dv, double scale, int window = 0, Tensor? columnSums = null, double softCap = 0) => Inner.AttentionBackward(q, k, v, output, dOutput, logSumExp, dq, dk, dv, scale, window, columnSums, softCap);
    public virtual void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor? dLogits, double lossScale) => Inner.CrossEntropy(logits, targets, losses, dLogits, lossScale);
    public virtual void CrossEntropyStatistics(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor statistics) => Inner.CrossEntropyStatistics(logits, targets, columnOffset, validColumns, statistics);
    public virtual void CrossEntropyCombine(Tensor statistics, Tensor targets, Tensor losses, Tensor logSumExp) => Inner.CrossEntropyCombine(statistics, targets, losses, logSumExp);
    public virtual void CrossEntropyGradient(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor logSumExp, Tensor dLogits, double lossScale) => Inner.CrossEntropyGradient(logits, targets, columnOffset, validColumns, logSumExp, dLogits, lossScale);
    public virtual void ArgMax(Tensor x, Tensor indices) => Inner.ArgMax(x, indices);
    public virtual void SampleRows(Tensor logits, Tensor parameters, Tensor positions, Tensor ids, bool temperatureOnly = false) => Inner.SampleRows(logits, parameters, positions, ids, temperatureOnly);
    public virtual void TokenLogprobs(Tensor logits, Tensor ids, int count, Tensor logprobs, Tensor? topIds) => Inner.TokenLogprobs(logits, ids, count, logprobs, topIds);
    public virtual void AddToColumns(Tensor x, Tensor starts, Tensor columns, Tensor values) => Inner.AddToColumns(x, starts, columns, values);
    public virtual void Sum(Tensor x, Tensor result, double scale = 1.0, bool accumulate = false) => Inner.Sum(x, result, scale, accumulate);
    public virtual void SumOfSquares(Tensor x, Tensor result) => Inner.SumOfSquares(x, result);
    public virtual void AdamW(Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step, Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null) => Inner.AdamW(parameters, gradients, m, v, in step, gradSumOfSquares, lowPrecisionCopy);
    public virtual void AdamWSplit(Tensor values, Tensor lowWords, Tensor gradients, Tensor m, Tensor v, in AdamWStep step, Tensor? gradSumOfSquares = null) => Inner.AdamWSplit(values, lowWords, gradients, m, v, in step, gradSumOfSquares);
    public virtual void SplitMasters(Tensor masters, Tensor values, Tensor lowWords) => Inner.SplitMasters(masters, values, lowWords);
    public virtual void JoinMasters(Tensor values, Tensor lowWords, Tensor masters) => Inner.JoinMasters(values, lowWords, masters);
    public virtual void AdamWRanges(Tensor parameters, Tensor gradients, Tensor m, Tensor v, IReadOnlyList<AdamWRange> ranges, in AdamWStep step, Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null) => Inner.AdamWRanges(parameters, gradients, m, v, ranges, in step, gradSumOfSquares, lowPrecisionCopy);
}
