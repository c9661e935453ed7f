using Tessera.Inference.Paging;

namespace Tessera.Inference.Scheduling;

/// <summary>
/// One token stream the scheduler serves: the prompt plus what has been generated so far (<see cref="Tokens"/>), how
/// many of those have their keys and values in the cache (<see cref="ComputedTokens"/>), and the block table that holds
/// them. A step computes some of the uncomputed tokens; when it computes the last one, the model's output for it gives the
/// next token (<see cref="Append"/>). Preemption drops the blocks and sets <see cref="ComputedTokens"/> to zero: the
/// tokens are recomputed later, so nothing generated is lost.
/// <para>
/// Speculative decoding: a decoding sequence may carry <see cref="Drafts"/>, tokens a drafter guessed after its last
/// known token (<see cref="AppendDrafts"/>). A step computes them with that token, and the model's outputs at those rows
/// say how many were right (<see cref="ResolveDrafts"/>): those become ordinary tokens, whose keys and values the step
/// already wrote; the rest are dropped, and the cache slots they were written to are overwritten later.
/// </para>
/// </summary>
public sealed class Sequence
{
    private readonly List<int> _tokens;
    private readonly List<UInt128> _blockHashes = new();

    /// <summary>A waiting sequence for <paramref name="prompt"/> that may grow to <paramref name="maxLength"/> tokens.</summary>
    public Sequence(long id, IReadOnlyList<int> prompt, int maxLength)
    {
        if (prompt.Count == 0) throw new ArgumentException("Sequence: the prompt is empty");
        if (maxLength < prompt.Count) throw new ArgumentException($"Sequence: maxLength ({maxLength}) is below the prompt's {prompt.Count} tokens");
        Id = id;
        _tokens = new List<int>(prompt);
        PromptLength = prompt.Count;
        MaxLength = maxLength;
    }

    /// <summary>Unique id, increasing in arrival order (first come, first served).</summary>
    public long Id { get; }

    /// <summary>
    /// The served LoRA adapter the sequence runs with: 0 the base, k the model's k-th served adapter
    /// (<see cref="Models.Transformer.ServedAdapters"/>, index k - 1). Its keys and values differ by adapter, so its prefix-cache
    /// hashes start from the adapter's seed (<see cref="Paging.PrefixHash.SeedOf"/>). Default 0.
    /// </summary>
    public int Adapter { get; init; }

    /// <summary>
    /// Which load of <see cref="Adapter"/>'s slot the sequence runs with (the engine numbers every adapter load), so that the
    /// prefix-cache chain of a slot's next adapter never meets this one's blocks (<see cref="Paging.PrefixHash.SeedOf"/>). Default 0.
    /// </summary>
    public long AdapterLoad { get; init; }

    /// <summary>Prompt tokens at the start of <see cref="Tokens"/>.</summary>
    public int PromptLength { get; }

    /// <summary>Most tokens (prompt + generated) the sequence may hold: the scheduler never needs blocks beyond it.</summary>
    public int MaxLength { get; }

    /// <summary>Prompt and generated tokens.</summary>
    public IReadOnlyList<int> Tokens => _tokens;

    /// <summary>Generated tokens so far.</summary>
    public int GeneratedCount => _tokens.Count - PromptLength;

    /// <summary>Leading tokens whose keys and values are in the cache.</summary>
    public int ComputedTokens { get; internal set; }

    /// <summary>Of <see cref="ComputedTokens"/>, how many came from shared prefix blocks instead of a forward pass.</summary>
    public int CachedPromptTokens { get; internal set; }

    /// <summary>Physical blocks holding positions 0, BlockSize, 2 BlockSize, ... in order; -1 for a leading block already
    /// returned to the pool because it lies left of every future query's sliding window.</summary>
    public List<int> BlockTable { get; } = new();

    /// <summary>Leading entries of <see cref="BlockTable"/> released as left of the sliding window (-1 now).</summary>
    internal int ReleasedBlocks { get; set; }

    /// <summary>Blocks the sequence references now (its table less the released entries).</summary>
    public int HeldBlocks => BlockTable.Count - ReleasedBlocks;

    /// <summary>Leading blocks of <see cref="BlockTable"/> already registered in the prefix cache.</summary>
    internal int RegisteredBlocks { get; set; }

    /// <summary>Where the sequence is.</summary>
    public SequenceStatus Status { get; internal set; } = SequenceStatus.Waiting;

    /// <summary>How many times it was preempted.</summary>
    public int Preemptions { get; internal set; }

    /// <summary>Tokens still to compute before the next token can be sampled.</summary>
    public int PendingTokens => _tokens.Count - ComputedTokens;

    /// <summary>Appends a sampled token (its keys and values are computed by the next step).</summary>
    public void Append(int token)
    {
        if (token < 0) throw new ArgumentOutOfRangeException(nameof(token), token, $"Sequence {Id}: a token id is not negative (placeholders go through AppendUnresolved)");
        if (Unresolved > 0) throw new InvalidOperationException($"Sequence {Id}: {Unresolved} sampled tokens are not resolved yet; a known token cannot follow them");
        if (Drafts > 0) throw new InvalidOperationException($"Sequence {Id}: {Drafts} draft tokens are not verified yet; resolve them before appending");
        if (_tokens.Count >= MaxLength) throw new InvalidOperationException($"Sequence {Id}: already at its maximum of {MaxLength} tokens");
        _tokens.Add(token);
    }

    /// <summary>
    /// Asynchronous scheduling: appends a token that a step enqueued on the device samples and the host does not know yet,
    /// as -1 - <paramref name="row"/> (the step's sampling row, which the next step reads on the device). The next step
    /// may compute it before <see cref="Resolve"/> gives its value.
    /// </summary>
    public void AppendUnresolved(int row)
    {
        if (Drafts > 0) throw new InvalidOperationException($"Sequence {Id}: {Drafts} draft tokens are not verified yet; resolve them before appending");
        if (row < 0) throw new ArgumentOutOfRangeException(nameof(row), row, $"Sequence {Id}: a sampling row is not negative");
        if (_tokens.Count >= MaxLength) throw new InvalidOperationException($"Sequence {Id}: already at its maximum of {MaxLength} tokens");
        _tokens.Add(-1 - row);
        Unresolved++;
    }

    /// <summary>Gives the oldest unresolved token its value (the host has read what the device sampled).</summary>
    public void Resolve(int token)
    {
        if (Unresolved == 0) throw new InvalidOperationException($"Sequence {Id}: no token is waiting to be resolved");
        if (token < 0) throw new ArgumentOutOfRangeException(nameof(token), token, $"Sequence {Id}: a token id is not negative");
        _tokens[_tokens.Count - Unresolved] = token;
        Unresolved--;
    }

    /// <summary>Trailing tokens appended by <see cref="AppendUnresolved"/> and not yet resolved (0 without asynchronous scheduling).</summary>
    public int Unresolved { get; private set; }

    /// <summary>Most draft tokens a step may verify for this sequence (0: it never speculates); set by whoever creates it.</summary>
    public int MaxDrafts { get; init; }

    /// <summary>
    /// How the device draws this sequence's tokens (<see cref="Tessera.Tensors.IBackend.SampleRows"/>, the runner's sampled ids), or null for
    /// the argmax: the host then reads the argmax, or the row of logits when it samples itself (penalties, logit bias,
    /// log-probabilities, a grammar).
    /// </summary>
    public Sampling.SamplingOptions? DeviceSampling { get; init; }

    /// <summary>
    /// How many most likely alternatives the device reports with each token's log-probability
    /// (<see cref="Tessera.Tensors.IBackend.TokenLogprobs"/>, 0 to 20), or null when the device computes none.
    /// </summary>
    public int? DeviceLogprobs { get; init; }

    /// <summary>
    /// The penalties and logit bias the device adds to this sequence's rows before drawing (<see cref="Sampling.PenaltyTerms"/>),
    /// or null when it adds none.
    /// </summary>
    public Sampling.PenaltyTerms? DevicePenalties { get; init; }

    /// <summary>Trailing tokens proposed by a drafter and not yet verified (0 outside a speculative step).</summary>
    public int Drafts { get; private set; }

    /// <summary>Tokens known to be the sequence's: <see cref="Tokens"/> less the unverified drafts and the unresolved samples.</summary>
    public int KnownTokens => _tokens.Count - Drafts - Unresolved;

    /// <summary>
    /// Appends <paramref name="drafts"/> as guesses of the tokens that follow the last one, for the next step to verify
    /// with it. Only a sequence whose every token is known and that leaves room for the token the verification samples
    /// after them can take drafts.
    /// </summary>
    public void AppendDrafts(ReadOnlySpan<int> drafts)
    {
        if (Drafts > 0 || Unresolved > 0)
            throw new InvalidOperationException($"Sequence {Id}: drafts follow known tokens only ({Drafts} drafts and {Unresolved} unresolved samples are pending)");
        if (drafts.Length > MaxLength - _tokens.Count - 1)
            throw new ArgumentException($"Sequence {Id}: {drafts.Length} drafts after {_tokens.Count} tokens leave no room under the maximum of {MaxLength} for the token sampled after them");
        foreach (int token in drafts)
        {
            if (token < 0) throw new ArgumentOutOfRangeException(nameof(drafts), token, $"Sequence {Id}: a draft token id is not negative");
            _tokens.Add(token);
        }
        Drafts = drafts.Length;
    }

    /// <summary>
    /// Keeps the first <paramref name="accepted"/> drafts as the sequence's own tokens and drops the others; the computed
    /// tokens shrink to what remains (the dropped drafts' keys and values are stale and will be overwritten).
    /// </summary>
    public void ResolveDrafts(int accepted)
    {
        TrimDrafts(accepted);
        Drafts = 0;
    }

    /// <summary>Appends one more draft token after the drafts so far (a draft model proposes them one at a time).</summary>
    public void AppendDraft(int token)
    {
        if (Unresolved > 0) throw new InvalidOperationException($"Sequence {Id}: drafts follow known tokens only ({Unresolved} unresolved samples are pending)");
        if (_tokens.Count + 1 > MaxLength - 1)
            throw new InvalidOperationException($"Sequence {Id}: another draft after {_tokens.Count} tokens leaves no room under the maximum of {MaxLength} for the token sampled after it");
        if (token < 0) throw new ArgumentOutOfRangeException(nameof(token), token, $"Sequence {Id}: a draft token id is not negative");
        _tokens.Add(token);
        Drafts++;
    }

    /// <summary>
    /// Leading tokens whose keys and values a draft model holds in its own pool (speculative decoding with a draft model;
    /// the pool shares the block tables). Reset with the blocks (preemption), and cut back with the drafts
    /// (<see cref="TrimDrafts"/>, <see cref="ResolveDrafts"/>) to the tokens that remain.
    /// </summary>
    public int DraftModelTokens { get; internal set; }

    /// <summary>Keeps the first <paramref name="count"/> drafts, still unverified, and drops the others (a step has room for fewer).</summary>
    public void TrimDrafts(int count)
    {
        if ((uint)count > (uint)Drafts)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"Sequence {Id}: {count} drafts kept of {Drafts}");
        _tokens.RemoveRange(_tokens.Count - (Drafts - count), Drafts - count);
        Drafts = count;
        ComputedTokens = Math.Min(ComputedTokens, _tokens.Count);
        DraftModelTokens = Math.Min(DraftModelTokens, _tokens.Count);   // a draft model's keys past here belong to dropped guesses
    }

    /// <summary>Whether the sequence holds <see cref="MaxLength"/> tokens: its last one is never computed, as nothing samples after it.</summary>
    public bool IsFull => _tokens.Count >= MaxLength;

    /// <summary>Hash of full block <paramref name="index"/> (its tokens and all before), computed once.</summary>
    internal UInt128 BlockHash(int index, int blockSize)
    {
        for (int i = _blockHashes.Count; i <= index; i++)
        {
            var previous = i == 0 ? PrefixHash.SeedOf(Adapter, AdapterLoad) : _blockHashes[i - 1];
            _blockHashes.Add(PrefixHash.Of(previous, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_tokens).Slice(i * blockSize, blockSize)));
        }
        return _blockHashes[index];
    }
}
