namespace Tessera.Cuda;

/// <summary>Which split-K kernel decodes grouped-query attention (a few query rows over a long KV cache).</summary>
public enum DecodeAttentionKernel
{
    /// <summary>
    /// The grouped kernel (each cached key and value row read once per kv head) from 2048 cached keys, the per-query-head
    /// kernel below (measured faster for short caches on the H200, docs/cuda-notes.md).
    /// </summary>
    Automatic,

    /// <summary>Always the grouped kernel (when the rows fit it).</summary>
    Grouped,

    /// <summary>Always the per-query-head kernel.</summary>
    PerQueryHead,
}
