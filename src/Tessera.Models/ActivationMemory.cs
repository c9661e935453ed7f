using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Tensors;

namespace Tessera.Models;

/// <summary>
/// The activation memory one rank keeps per micro-batch between its forward and its backward, predicted from the
/// configuration and the parallel layout: Korthikanti et al. 2022's accounting (Megatron's sbh(34 + 5as/h) per layer,
/// <see cref="MegatronBytesPerLayer"/>), redone for the tensors this code keeps. The prediction follows the code, not the
/// paper: it lists each pooled buffer of the micro-batch's store slot (<see cref="ActivationStore"/>), and the CPU backend's
/// allocation counter agrees with it to the byte (tested at tp 1, 2 and 4, with and without sequence parallelism and
/// recomputation). What differs from the paper, per layer and token (h = C, 16-bit activations):
/// <list type="bullet">
/// <item>No dropout, so none of the paper's masks (2 of its 34 bytes per h); attention keeps the log-sum-exp (H floats, the
/// FlashAttention way) instead of the softmax scores and their dropout (its 5as/h); the normalization statistics (F32 mean
/// and 1/rms) are counted. Without parallelism that leaves 32h bytes for GPT-2 against the paper's 34h.</item>
/// <item>GQA: the fused QKV output is (H + 2K) D wide, not 3C; SwiGLU keeps [gate | up] and its output (3F) where GELU keeps
/// the pre-activation and its output (2F).</item>
/// <item>Tensor parallelism alone: 8h whole (the norms' outputs and the row-parallel outputs, which are the residual stream)
/// and the rest split, as the paper's 10 + 24/t less its 2 of masks.</item>
/// <item>Sequence parallelism: the norms' outputs and the residual stream are split, and the row-parallel products' partial
/// sums (N, C), dead once reduce-scattered, live in buffers shared by every block; but the gathered inputs of the
/// column-parallel products stay whole in the slot (their weight gradients read them; Megatron all-gathers again in
/// backward instead), 4h bytes a token in 16 bits that the paper divides by t.</item>
/// </list>
/// </summary>
public sealed class ActivationMemory
{
    private ActivationMemory(IReadOnlyList<ActivationMemoryItem> items, IReadOnlyList<ActivationMemoryItem> shared, long megatronPerLayer)
    {
        Items = items;
        Shared = shared;
        MegatronBytesPerLayer = megatronPerLayer;
    }

    /// <summary>Every buffer the micro-batch keeps, blocks' (Count = blocks) and the embeddings' and head's (Count = 1).</summary>
    public IReadOnlyList<ActivationMemoryItem> Items { get; }

    /// <summary>Buffers shared by every micro-batch that the forward allocates too: the LM head's chunk of logits, under
    /// sequence parallelism the partial sums before each reduce-scatter, under recomputation one block's activations (the
    /// first forward's transient slot).</summary>
    public IReadOnlyList<ActivationMemoryItem> Shared { get; }

    /// <summary>Bytes one micro-batch keeps between its forward and its backward, on this rank.</summary>
    public long PerMicroBatchBytes => Items.Sum(i => i.TotalBytes);

    /// <summary>Bytes of <see cref="Shared"/>: once per rank, whatever the micro-batches in flight.</summary>
    public long SharedBytes => Shared.Sum(i => i.TotalBytes);

    /// <summary>Bytes one block keeps per micro-batch (its items with Count &gt; 1, or all per-block ones).</summary>
    public long PerBlockBytes => Items.Where(i => i.Name.StartsWith("block ", StringComparison.Ordinal)).Sum(i => i.Bytes);

    /// <summary>Korthikanti et al.'s bytes per layer for the same micro-batch, width, heads and layout (16-bit activations,
    /// dropout, materialized attention scores): sbh(34 + 5as/h), sbh(10 + 24/t + 5as/(ht)) with tensor parallelism,
    /// sbh/t (34 + 5as/h) with sequence parallelism too, and 2sbh (2sbh/t with sequence parallelism) with full recomputation
    /// (the block's input only). For comparison: the paper counts what Megatron-LM keeps, not what this code keeps.</summary>
    public long MegatronBytesPerLayer { get; }

    /// <summary>
    /// The estimate for micro-batches of <paramref name="sequences"/> x <paramref name="sequenceLength"/> tokens of a model of
    /// <paramref name="config"/> with activations in <paramref name="dtype"/> on rank of a tensor-parallel group of
    /// <paramref name="tensorParallel"/> (with <paramref name="sequenceParallel"/>), blocks checkpointed when
    /// <paramref name="recompute"/>, the LM head fused over chunks of at most <paramref name="lossChunkRows"/> rows (default:
    /// the model's, <see cref="FusedLinearCrossEntropy.DefaultChunkRows"/>).
    /// </summary>
    public static ActivationMemory Estimate(TransformerConfig config, int sequences, int sequenceLength, DType dtype,
        int tensorParallel = 1, bool sequenceParallel = false, bool recompute = false, int? lossChunkRows = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        int t = tensorParallel;
        if (sequences <= 0 || sequenceLength <= 0)
            throw new ArgumentOutOfRangeException(nameof(sequences), $"activation memory: a micro-batch of {sequences} x {sequenceLength} tokens must be positive");
        if (t < 1) throw new ArgumentOutOfRangeException(nameof(tensorParallel), $"activation memory: tp ({t}) must be at least 1");
        int heads = config.Heads, kv = config.EffectiveKvHeads, c = config.Embedding, d = config.HeadSize, f = config.EffectiveHidden;
        int vPad = config.EffectivePaddedVocab;
        long n = (long)sequences * sequenceLength;
        if (heads % t != 0) throw new ArgumentException($"activation memory: tp ({t}) must divide the attention heads (Heads = {heads})");
        if (!new ShardPart(kv, d).Divides(t)) throw new ArgumentException($"activation memory: tp ({t}) must divide the key/value heads (KvHeads = {kv}) or be a multiple of them");
        if (!config.IsMixtureOfExperts && f % t != 0) throw new ArgumentException($"activation memory: tp ({t}) must divide the MLP width (Hidden = {f})");
        if (config.IsMixtureOfExperts && (config.EffectiveExpertHidden % t != 0 || config.SharedExpertHidden % t != 0))
            throw new ArgumentException($"activation memory: tp ({t}) must divide the experts' width (ExpertHidden = {config.EffectiveExpertHidden}) and the shared expert's (SharedExpertHidden = {config.SharedExpertHidden})");
        if (vPad % t != 0) throw new ArgumentException($"activation memory: tp ({t}) must divide the padded vocabulary (PaddedVocabSize = {vPad})");
        bool sp = sequenceParallel && t > 1;
        if (sp && n % t != 0) throw new ArgumentException($"activation memory: tp ({t}) must divide the micro-batch's tokens ({sequences} x {sequenceLength}) under sequence parallelism");
        if (lossChunkRows is <= 0) throw new ArgumentOutOfRangeException(nameof(lossChunkRows), $"activation memory: the fused head's chunk of {lossChunkRows} rows must be positive (the unfused head is a test reference, not estimated)");

        long b = dtype.SizeInBytes();
        long stat = dtype == DType.F64 ? 8 : 4;                       // norm statistics, log-sum-exp, losses: F32 (F64 for F64 models)
        long r = sp ? n / t : n;                                      // rows of the residual stream this rank holds
        int hl = heads / t, kl = new ShardPart(kv, d).LocalUnits(t), fl = f / t, vl = vPad / t;
        bool llama = config.Family == ModelFamily.Llama;
        int normStats = llama ? 1 : 2;                                // RMSNorm keeps 1/rms; LayerNorm the mean too
        string rows = sp ? "R" : "N";

        // One block, in the order its forward fills the slot.
        var block = new List<(string Name, string Shape, long Bytes)>
        {
            ("norm1.out", $"({rows}, C)", r * c * b),
            ("norm1 statistics", $"{normStats} x ({rows})", normStats * r * stat),
        };
        if (sp) block.Add(("attn.input.gathered", "(N, C)", n * c * b));
        block.Add(("attn.qkv.out", "(N, (H/t + 2K/t) D)", n * (hl + 2 * kl) * d * b));
        if (config.QkNorm)
        {
            // Qwen3's head norms: each head copied out for the norm (its saved input), the norm's output, its 1/rms.
            block.Add(("attn.q_norm.in", "(N H/t, D)", n * hl * d * b));
            block.Add(("attn.q_norm.out", "(N H/t, D)", n * hl * d * b));
            block.Add(("attn.q_norm.rstd", "(N H/t)", n * hl * stat));
            block.Add(("attn.k_norm.in", "(N K/t, D)", n * kl * d * b));
            block.Add(("attn.k_norm.out", "(N K/t, D)", n * kl * d * b));
            block.Add(("attn.k_norm.rstd", "(N K/t)", n * kl * stat));
        }
        block.Add(("attn.att.out", "(N, H/t D)", n * hl * d * b));
        block.Add(("attn.att.lse", "(N, H/t) F32", n * hl * stat));
        // The row-parallel products' outputs: the residual stream itself without SP; under SP partial sums (N, C) that are
        // dead once reduce-scattered, in buffers shared by every block (below), and the rank's rows kept.
        if (sp) block.Add(("attn.proj.output.scattered", "(R, C)", r * c * b));
        else block.Add(("attn.proj.out", "(N, C)", n * c * b));
        if (config.PostNorms)
        {
            // Gemma: the branch's output normalized, then added to the block's input in a buffer of its own.
            block.Add(("post_attn_norm.out", $"({rows}, C)", r * c * b));
            block.Add(("post_attn_norm statistics", $"({rows})", r * stat));
            block.Add(("residual (x + the normalized attention)", $"({rows}, C)", r * c * b));
        }
        block.Add(("norm2.out", $"({rows}, C)", r * c * b));
        block.Add(("norm2 statistics", $"{normStats} x ({rows})", normStats * r * stat));
        if (sp) block.Add(("mlp.input.gathered", "(N, C)", n * c * b));
        if (config.IsMixtureOfExperts)
        {
            // The experts' buffers hold the rows routed to them, N k over all experts; each keeps the largest count it has
            // seen, so later micro-batches routed otherwise can hold more (up to N rows an expert), and checkpointed blocks,
            // whose recomputation buffers every block shares, hold the largest count of any block: a lower bound then.
            // Under tp every rank routes all N rows and holds F' / t of every expert; its combined output is a partial (N, C),
            // reduced in place (the residual added after), or reduce-scattered into the rank's rows under SP (counted below).
            int e = config.Experts, fe = config.EffectiveExpertHidden / t;
            long nk = n * config.ExpertsPerToken;
            block.Add(("mlp.router.out", "(N, E)", n * e * b));
            if (!sp) block.Add((t > 1 ? "mlp.out.partial (this rank's part of the experts' sum, all-reduced in place)" : "mlp.out (the residual plus the experts' sum)", "(N, C)", n * c * b));
            block.Add(("mlp.experts.ids", "(N k) I32 over the experts", nk * 4));
            block.Add(("mlp.experts.w", "(N k) over the experts", nk * b));
            block.Add(("mlp.experts.x (gathered rows)", "(N k, C)", nk * c * b));
            block.Add(("mlp.experts.gate_up.out", "(N k, 2F'/t)", nk * 2 * fe * b));
            block.Add(("mlp.experts.swiglu.out", "(N k, F'/t)", nk * fe * b));
            block.Add(("mlp.experts.proj.out", "(N k, C)", nk * c * b));
            block.Add(("mlp.experts.wy (weighted rows)", "(N k, C)", nk * c * b));
            if (config.HasSharedExpert)
            {
                // Every row runs the shared expert (one SwiGLU over all N), scaled by the sigmoid of its gate's logit.
                int fs = config.SharedExpertHidden / t;
                block.Add(("mlp.shared_expert.gate_up.out", "(N, 2F_s/t)", n * 2 * fs * b));
                block.Add(("mlp.shared_expert.swiglu.out", "(N, F_s/t)", n * fs * b));
                block.Add(("mlp.shared_expert.proj.out", "(N, C)", n * c * b));
                block.Add(("mlp.shared_expert_gate.out", "(N, 1)", n * b));
                block.Add(("mlp.shared_expert_gate.sigmoid", "(N, 1, 1)", n * b));
            }
        }
        else if (config.GeluGate)
        {
            // GeGLU: gate and up as two products, GELU(gate) and the gated product.
            block.Add(("mlp.gate.out", "(N, F/t)", n * fl * b));
            block.Add(("mlp.up.out", "(N, F/t)", n * fl * b));
            block.Add(("mlp.gelu_gate.out", "(N, F/t)", n * fl * b));
            block.Add(("mlp.swiglu.out", "(N, F/t)", n * fl * b));
        }
        else if (llama)
        {
            block.Add(("mlp.gate_up.out", "(N, 2F/t)", n * 2 * fl * b));
            block.Add(("mlp.swiglu.out", "(N, F/t)", n * fl * b));
        }
        else
        {
            block.Add(("mlp.fc.preact", "(N, F/t)", n * fl * b));
            block.Add(("mlp.fc.out", "(N, F/t)", n * fl * b));
        }
        if (sp) block.Add((config.IsMixtureOfExperts ? "mlp.output.scattered" : "mlp.proj.output.scattered", "(R, C)", r * c * b));
        else if (!config.IsMixtureOfExperts) block.Add(("mlp.proj.out", "(N, C)", n * c * b));
        if (config.PostNorms)
        {
            block.Add(("post_mlp_norm.out", $"({rows}, C)", r * c * b));
            block.Add(("post_mlp_norm statistics", $"({rows})", r * stat));
            block.Add(("out (the residual + the normalized MLP)", $"({rows}, C)", r * c * b));
        }

        var items = new List<ActivationMemoryItem> { new("tok_emb.input", "(N) I32", n * 4, 1) };
        var shared = new List<ActivationMemoryItem>();
        // Gemma's norms apply 1 + w in the forward's kernels; only the backward forms those scales (C or D elements, backward
        // scratch like the rest of the backward's, not held between the passes).
        if (sp)
        {
            items.Add(new("tok_emb.output.scattered", "(R, C)", r * c * b, 1));
            shared.Add(new("tok_emb.out (partial lookups before the reduce-scatter)", "(N, C)", n * c * b, 1));
            shared.Add(new("attn.proj.out (partial sums before the reduce-scatter)", "(N, C)", n * c * b, 1));
            shared.Add(new(config.IsMixtureOfExperts ? "mlp.out.partial (the experts' partial sum before the reduce-scatter)" : "mlp.proj.out (partial sums before the reduce-scatter)", "(N, C)", n * c * b, 1));
        }
        else items.Add(new("tok_emb.out", "(N, C)", n * c * b, 1));
        if (!llama) items.Add(new("pos_emb.input", $"({rows}) I32", r * 4, 1));
        if (recompute)
        {
            items.Add(new("block checkpoint (the block's input)", $"({rows}, C)", r * c * b, config.Layers));
            items.Add(new("blocks.out (the last block's output)", $"({rows}, C)", r * c * b, 1));
            shared.AddRange(block.Select(x => new ActivationMemoryItem("recomputation: " + x.Name, x.Shape, x.Bytes, 1)));
        }
        else items.AddRange(block.Select(x => new ActivationMemoryItem("block " + x.Name, x.Shape, x.Bytes, config.Layers)));
        items.Add(new("final_norm.out", $"({rows}, C)", r * c * b, 1));
        items.Add(new("final_norm statistics", $"{normStats} x ({rows})", normStats * r * stat, 1));
        if (sp) items.Add(new("head.input.gathered", "(N, C)", n * c * b, 1));
        items.Add(new("loss.targets", "(N) I32", n * 4, 1));
        items.Add(new("loss.out", "(N) F32", n * stat, 1));
        if (config.FinalSoftCap > 0)
        {
            // Gemma 2's capped logits take the unfused head: the whole micro-batch's logits (their gradient, in place, kept for
            // the backward) and a shared copy of the capped values for the cap's backward.
            items.Add(new("lm_head.out (the logits, then their gradient)", "(N, V/t)", n * vl * b, 1));
            if (t > 1)
            {
                items.Add(new("lm_head.loss.statistics", "(N, 3) F32", n * 3 * stat, 1));
                items.Add(new("lm_head.loss.statistics.gathered", "(t, N, 3) F32", t * n * 3 * stat, 1));
                items.Add(new("lm_head.loss.lse", "(N) F32", n * stat, 1));
            }
            shared.Add(new("lm_head.capped (the capped logits)", "(N, V/t)", n * vl * b, 1));
            if (t == 1 && vPad > config.VocabSize)
                shared.Add(new("loss.padding", "(N, Vpad - V)", n * (vPad - config.VocabSize) * b, 1));
            return new ActivationMemory(items, shared, Megatron(sequenceLength, sequences, c, heads, t, sp, recompute));
        }
        items.Add(new("lm_head.dx (the loss's gradient at the head's input)", "(N, C)", n * c * b, 1));
        long chunk = FusedLinearCrossEntropy.ChunkRows((int)Math.Min(n, int.MaxValue), lossChunkRows ?? FusedLinearCrossEntropy.DefaultChunkRows(vl));
        if (t > 1)
        {
            items.Add(new("lm_head.loss.statistics", "(Rc, 3) F32", chunk * 3 * stat, 1));
            items.Add(new("lm_head.loss.statistics.gathered", "(t, Rc, 3) F32", t * chunk * 3 * stat, 1));
            items.Add(new("lm_head.loss.lse", "(Rc) F32", chunk * stat, 1));
        }
        shared.Add(new("lm_head.loss.chunk (a chunk's logits)", "(Rc, V/t)", chunk * vl * b, 1));
        if (t == 1 && vPad > config.VocabSize)
            shared.Add(new("lm_head.loss.padding", "(Rc, Vpad - V)", chunk * (vPad - config.VocabSize) * b, 1));
        return new ActivationMemory(items, shared, Megatron(sequenceLength, sequences, c, heads, t, sp, recompute));
    }

    /// <summary>Korthikanti et al. 2022, Table 2, in bytes per layer (16-bit activations).</summary>
    private static long Megatron(long s, long b, long h, long a, int t, bool sp, bool recompute)
    {
        double sbh = (double)s * b * h, scores = 5.0 * a * s / h;
        double bytes = recompute ? 2 * sbh / (sp ? t : 1)
            : t == 1 ? sbh * (34 + scores)
            : sp ? sbh / t * (34 + scores)
            : sbh * (10 + 24.0 / t + scores / t);
        return (long)Math.Round(bytes);
    }
}
