using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Models;

namespace Tessera.Inference.Speculation;

/// <summary>
/// Guesses with a smaller model of the same vocabulary (speculative decoding as Leviathan et al. and Chen et al. describe
/// it, greedy): before each step, every sequence about to decode runs through the draft model, which proposes its own
/// greedy continuation one token at a time; the served model then verifies those guesses in its step.
/// <para>
/// The draft model keeps its keys and values in a pool of its own with as many blocks as the served model's, addressed
/// through the same block tables, so the scheduler's allocation, prefix sharing and preemption cover both pools at once.
/// <see cref="Sequence.DraftModelTokens"/> says how far the draft model's pool holds a sequence. The draft model follows
/// every step of the served model (<see cref="CatchUp"/>: the same prefill chunks and decode tokens, in a pass of its own
/// before the step), catches up on what the last verification kept in the first of the drafting passes (at most the
/// step's kept guesses and the token after them), then proposes; dropping or verifying the drafts cuts it back to the
/// tokens that remain (<see cref="Sequence.TrimDrafts"/>). So it never lags the served model by more than a step's
/// guesses, which lets the scheduler release the blocks left of a sliding window: a block goes back once neither model
/// reads it again (<see cref="Scheduler"/>, <see cref="DraftModelPool"/>). The draft model's window may differ from the
/// served one's, or be absent; the blocks then follow the larger need of the two. A block enters the prefix cache only
/// once both pools hold its tokens, so a sequence that takes cached blocks takes the draft model's keys with them and
/// starts its draft pool where its served one starts.
/// </para>
/// </summary>
public sealed class ModelDrafter : IDisposable
{
    private readonly PagedKvCache _cache;
    private readonly PagedModelRunner _runner;
    private readonly int _maxRows, _maxSequences;

    /// <summary>
    /// A drafter running <paramref name="draft"/> beside a served model whose pool is <paramref name="servedCache"/>, for
    /// steps of up to <paramref name="maxRows"/> tokens of <paramref name="maxSequences"/> sequences of up to
    /// <paramref name="maxSequenceLength"/> positions.
    /// </summary>
    /// <exception cref="ArgumentException">The draft model cannot draft for the served one (vocabulary, context).</exception>
    public ModelDrafter(Transformer draft, Transformer served, PagedKvCache servedCache, int maxRows, int maxSequences, int maxSequenceLength, bool recordGraphs)
    {
        ArgumentNullException.ThrowIfNull(draft);
        ArgumentNullException.ThrowIfNull(served);
        ArgumentNullException.ThrowIfNull(servedCache);
        var (d, s) = (draft.Config, served.Config);
        if (d.VocabSize != s.VocabSize)
            throw new ArgumentException($"the draft model's vocabulary ({d.VocabSize} tokens) differs from the served model's ({s.VocabSize}); a draft model must share the tokenizer");
        if (d.MaxSequenceLength < maxSequenceLength)
            throw new ArgumentException($"the draft model's context ({d.MaxSequenceLength}) is shorter than the served sequences' {maxSequenceLength} positions; serve a shorter --max-model-len");
        _maxRows = maxRows;
        _maxSequences = maxSequences;
        // The draft pool follows the served one's element type (an I8 or F8E4M3 served cache gives a draft cache of the same codes), as the draft's
        // weights follow the served model's quantization: both are sized by the same choice of precision.
        long blockBytes = PagedKvCache.BlockBytes(servedCache.Options.PoolDType(draft.DType), d.Layers, d.EffectiveKvHeads, d.HeadSize, servedCache.BlockSize);
        var options = servedCache.Options with { MemoryBytes = blockBytes * servedCache.Blocks };
        _cache = new PagedKvCache(draft.Backend, draft.DType, d.Layers, d.EffectiveKvHeads, d.HeadSize, options);
        try
        {
            if (_cache.Blocks != servedCache.Blocks)
                throw new ArgumentException($"the draft model's pool holds {_cache.Blocks} blocks where the served model's holds {servedCache.Blocks}");
            _runner = new PagedModelRunner(draft, _cache, maxRows, maxSequences, maxSequenceLength, recordGraphs);
        }
        catch
        {
            _cache.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Appends up to <c>drafts[i]</c> guesses to each of <paramref name="sequences"/> (running, about to decode: one known
    /// token to compute, no drafts yet), whose block tables already cover those positions. The first pass computes what
    /// each sequence's draft pool lacks, its pending token included, within the runner's rows (a sequence that does not
    /// catch up in it gets no guesses this step); each later pass feeds every sequence's latest guess.
    /// </summary>
    public void Draft(IReadOnlyList<Sequence> sequences, IReadOnlyList<int> drafts)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        ArgumentNullException.ThrowIfNull(drafts);
        if (sequences.Count != drafts.Count) throw new ArgumentException("ModelDrafter.Draft: one draft count per sequence");
        // Pass 0: catch up, and sample the first guess of every sequence that caught up.
        var step = new ScheduledStep();
        var active = new List<(Sequence Sequence, int Want)>();
        int rows = 0;
        for (int i = 0; i < sequences.Count && step.Sequences.Count < _maxSequences && rows < _maxRows; i++)
        {
            var sequence = sequences[i];
            if (drafts[i] <= 0) continue;
            int start = sequence.DraftModelTokens, lag = sequence.Tokens.Count - start;
            int count = Math.Min(lag, _maxRows - rows);
            step.Sequences.Add(new ScheduledSequence(sequence, start, count));
            rows += count;
            if (count == lag) active.Add((sequence, drafts[i]));
        }
        if (step.IsEmpty) return;
        step.Tokens = rows;
        var ids = Run(step);
        int r = 0;
        foreach (var s in step.Sequences)
        {
            s.Sequence.DraftModelTokens = s.Start + s.Count;
            if (s.Samples) s.Sequence.AppendDraft(ids[r++]);
        }
        // Passes 1..: one row a sequence that wants more, its latest guess at the next position.
        while (true)
        {
            active.RemoveAll(a => a.Sequence.Drafts >= a.Want);
            if (active.Count == 0) return;
            step = new ScheduledStep();
            foreach (var (sequence, _) in active) step.Sequences.Add(new ScheduledSequence(sequence, sequence.Tokens.Count - 1, 1));
            step.Tokens = active.Count;
            ids = Run(step);
            for (int i = 0; i < active.Count; i++)
            {
                active[i].Sequence.DraftModelTokens = active[i].Sequence.Tokens.Count;
                active[i].Sequence.AppendDraft(ids[i]);
            }
        }
    }

    /// <summary>
    /// Computes in the draft model's pool the known tokens that the served model's <paramref name="step"/> computes (its
    /// prefill chunks, and the decode tokens of sequences that did not draft; a verifying sequence's pool holds them
    /// already), from where each sequence's draft pool ends, before the step runs: the draft pool keeps pace with the
    /// served one, so no block the scheduler releases after the step is one the draft model still needs. Passes of at
    /// most the runner's rows and sequences, as many as it takes (one, unless a sequence lags).
    /// </summary>
    public void CatchUp(ScheduledStep step)
    {
        ArgumentNullException.ThrowIfNull(step);
        var pending = new List<(Sequence Sequence, int End)>();
        foreach (var s in step.Sequences)
        {
            int end = Math.Min(s.Start + s.Count, s.Sequence.KnownTokens);
            if (s.Sequence.DraftModelTokens < end) pending.Add((s.Sequence, end));
        }
        while (pending.Count > 0)
        {
            var pass = new ScheduledStep();
            int rows = 0;
            for (int i = 0; i < pending.Count && pass.Sequences.Count < _maxSequences && rows < _maxRows; i++)
            {
                var (sequence, end) = pending[i];
                int count = Math.Min(end - sequence.DraftModelTokens, _maxRows - rows);
                pass.Sequences.Add(new ScheduledSequence(sequence, sequence.DraftModelTokens, count));
                rows += count;
            }
            pass.Tokens = rows;
            Run(pass);
            foreach (var s in pass.Sequences) s.Sequence.DraftModelTokens = s.Start + s.Count;
            pending.RemoveAll(p => p.Sequence.DraftModelTokens >= p.End);
        }
    }

    private int[] Run(ScheduledStep step)
    {
        _runner.Run(step, withLogits: false, out var greedy, out _);
        return greedy.ToArray();
    }

    public void Dispose()
    {
        _runner.Dispose();
        _cache.Dispose();
    }
}
