using Tessera.Inference.Scheduling;

namespace Tessera.Inference.Paging;

/// <summary>
/// Serving a tensor-parallel model on thread ranks (EnergonAI's and vLLM's driver and workers): rank 0's engine schedules,
/// and every step it runs is handed to the other ranks' runners, which run the same step over the same block tables into
/// their own pools (their key/value heads) at the same time; the model's collectives inside the step meet on every rank.
/// Rank 0's runner publishes each step (<see cref="Publish"/>) and joins the others after its own (<see cref="Join"/>); each
/// other rank's thread loops in <see cref="Follow"/> until <see cref="Stop"/>. The other ranks build their runners, whose
/// warm-up passes are collective, only once rank 0 builds its own (<see cref="Start"/>, <see cref="WaitForStart"/>), so a
/// rank 0 that fails before (a missing tokenizer, too little KV memory) stops them at once instead of leaving them waiting
/// in a collective.
/// </summary>
public sealed class TensorParallelSteps
{
    private readonly SemaphoreSlim[] _go;
    private readonly CountdownEvent _done;
    private readonly ManualResetEventSlim _started = new(false);
    private ScheduledStep? _step;
    private bool _withLogits, _stopped;
    private volatile Exception? _fault;

    /// <summary>Coordination of rank 0 with <paramref name="followers"/> other ranks.</summary>
    public TensorParallelSteps(int followers)
    {
        if (followers < 1) throw new ArgumentOutOfRangeException(nameof(followers), followers, "TensorParallelSteps: at least one other rank");
        _go = Enumerable.Range(0, followers).Select(_ => new SemaphoreSlim(0)).ToArray();
        _done = new CountdownEvent(followers);
        _done.Signal(followers);                                          // nothing outstanding yet
    }

    /// <summary>Ranks besides rank 0.</summary>
    public int Followers => _go.Length;

    /// <summary>Rank 0, about to build its runner: the other ranks build theirs.</summary>
    public void Start() => _started.Set();

    /// <summary>Another rank: waits until rank 0 builds its runner (true) or stops without one (false).</summary>
    public bool WaitForStart()
    {
        _started.Wait();
        return !Volatile.Read(ref _stopped);
    }

    /// <summary>Rank 0: hands <paramref name="step"/> to every other rank (they start it at once).</summary>
    public void Publish(ScheduledStep step, bool withLogits)
    {
        ArgumentNullException.ThrowIfNull(step);
        if (_fault is { } fault) throw new InvalidOperationException($"a tensor-parallel rank failed: {fault.Message}", fault);
        if (!_done.IsSet) throw new InvalidOperationException("TensorParallelSteps.Publish: the previous step is not joined");
        (_step, _withLogits) = (step, withLogits);
        _done.Reset(_go.Length);
        foreach (var go in _go) go.Release();
    }

    /// <summary>Rank 0, after its own part of the step: waits for the other ranks' parts.</summary>
    public void Join()
    {
        _done.Wait();
        if (_fault is { } fault) throw new InvalidOperationException($"a tensor-parallel rank failed: {fault.Message}", fault);
    }

    /// <summary>
    /// Rank <paramref name="rank"/> (1 .. Followers): runs every published step through <paramref name="runner"/> until
    /// <see cref="Stop"/>. A failure is recorded for rank 0's next <see cref="Join"/> and ends the loop.
    /// </summary>
    public void Follow(int rank, PagedModelRunner runner)
    {
        ArgumentNullException.ThrowIfNull(runner);
        if (rank < 1 || rank > _go.Length) throw new ArgumentOutOfRangeException(nameof(rank), rank, $"TensorParallelSteps.Follow: ranks 1 .. {_go.Length} follow");
        while (true)
        {
            _go[rank - 1].Wait();
            if (Volatile.Read(ref _stopped)) return;
            try
            {
                runner.Run(_step!, _withLogits, out _, out _);
            }
            catch (Exception e)
            {
                _fault ??= e;
                _done.Signal();
                return;
            }
            _done.Signal();
        }
    }

    /// <summary>Rank 0, at shutdown or when it fails: every other rank leaves <see cref="Follow"/> after its current step,
    /// or <see cref="WaitForStart"/> at once. Idempotent.</summary>
    public void Stop()
    {
        if (Volatile.Read(ref _stopped)) return;
        Volatile.Write(ref _stopped, true);
        _started.Set();
        foreach (var go in _go) go.Release();
    }
}
