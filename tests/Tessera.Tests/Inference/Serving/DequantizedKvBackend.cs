using Tessera.Tensors;
using Tessera.Tests.Support;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// The quantized KV caches' oracle: a backend whose floating-point paged pools hold what a pool of
/// <paramref name="poolDType"/> (I8 or F8E4M3) would stand for. Each append quantizes every (row, head) exactly as that
/// pool's append does (<see cref="PagedKvPool.QuantizeRow"/> on the row in F32) and writes scale x value (exact in double,
/// rounded once for F32) into the float pool; everything else runs on <see cref="ForwardingBackend.Inner"/>. On the CPU,
/// whose quantized attention gathers the same numbers, an engine over this backend with a float cache must compute what an
/// engine with a quantized cache computes, bit for bit.
/// </summary>
internal sealed class DequantizedKvBackend(IBackend inner, DType poolDType) : ForwardingBackend(inner)
{
    /// <summary>Rows appended so far (to show the oracle ran).</summary>
    public long RowsQuantized { get; private set; }

    public override void PagedAppend(Tensor keysAndValues, Tensor pool, PagedBatch batch, Tensor? poolScales = null)
    {
        if (poolScales is not null || PagedKvPool.IsQuantized(pool.DType))
            throw new InvalidOperationException($"DequantizedKvBackend stands in for a {poolDType} pool with a float one: give it float pools");
        int n = keysAndValues.Size(0), r = keysAndValues.Size(1), d = keysAndValues.Size(2);
        var rows = Inner.Allocate(new Shape(n, r, d), keysAndValues.DType);
        try
        {
            Inner.Copy(keysAndValues, rows);
            var host = TestTensors.ToDoubles(Inner, rows);
            var row = new float[d];
            var codes = new byte[d];
            var value = PagedKvPool.CodeValues(poolDType).ToArray();
            for (long at = 0; at < host.Length; at += d)
            {
                for (int i = 0; i < d; i++) row[i] = (float)host[at + i];
                double scale = PagedKvPool.QuantizeRow(poolDType, row, codes);
                for (int i = 0; i < d; i++) host[at + i] = scale * value[codes[i]];
            }
            TestTensors.Write(Inner, rows, host);
            Inner.PagedAppend(rows, pool, batch);
            RowsQuantized += (long)n * r;
        }
        finally
        {
            rows.Storage.Dispose();
        }
    }

    public override void MatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        // The fused op computes qkv and appends the raw keys and values; the append again overwrites the same slots with
        // what the quantized cache would hold.
        Inner.MatMulRopePagedAppend(x, norm, weight, bias, qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
        PagedAppend(qkv.Slice(1, queryHeads, pool.Size(2)), pool, batch, poolScales);
    }

    public override void QuantizedMatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv,
        int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        // As the fused op above.
        Inner.QuantizedMatMulRopePagedAppend(x, norm, weight, bias, qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
        PagedAppend(qkv.Slice(1, queryHeads, pool.Size(2)), pool, batch, poolScales);
    }

    public override void NormalizeHeadsRopePagedAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        // As the fused op above.
        Inner.NormalizeHeadsRopePagedAppend(qkv, queryHeads, queryNorm, keyNorm, pool, positions, batch, frequencies, poolScales);
        PagedAppend(qkv.Slice(1, queryHeads, pool.Size(2)), pool, batch, poolScales);
    }

    public override void RopePagedAppend(Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies,
        Tensor? poolScales = null)
    {
        // As the fused op above: the rotation and the raw append, then the append of what the quantized cache would hold.
        Inner.RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
        PagedAppend(qkv.Slice(1, queryHeads, pool.Size(2)), pool, batch, poolScales);
    }
}
