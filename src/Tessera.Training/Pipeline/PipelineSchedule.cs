namespace Tessera.Training.Pipeline;

/// <summary>
/// A pipeline schedule as data: for each of p ranks the list of actions it performs in one step (forwards and backwards of
/// micro-batches on its virtual stages, the sends and receives between them, the optimizer step), generated for GPipe, 1F1B
/// (PipeDream-Flush) and interleaved 1F1B (Megatron-LM), or given by hand. One executor (<see cref="PipelineExecutor"/>) runs
/// any schedule; <see cref="PipelineSimulator"/> checks one before it runs (every action present once and in order, every send
/// paired with its receive, no deadlock under NCCL's in-order semantics) and draws its timeline.
/// <para>
/// The generators write each rank's compute order (which is what distinguishes the schedules) and place the communication the
/// way Megatron-LM's schedules do: a receive just before the compute that needs it, a send just after the compute that produced
/// it, so that a send and the receive that follows it form one batch (its send_forward_recv_backward and
/// send_backward_recv_forward pairs). Virtual stage s runs on rank s mod p (<see cref="Tessera.Nn.Parallel.PipelinePartition"/>).
/// </para>
/// </summary>
public sealed class PipelineSchedule
{
    private readonly PipelineAction[][] _actions;

    /// <summary>
    /// A schedule named <paramref name="name"/> of <paramref name="actions"/>[r] for rank r of <paramref name="stages"/>, over
    /// <paramref name="chunks"/> model chunks per rank and <paramref name="microBatches"/> micro-batches; a training schedule
    /// has backwards and ends each list with the optimizer step, a forward-only one (evaluation) has neither. Not checked here:
    /// <see cref="PipelineSimulator.Validate"/> does.
    /// </summary>
    public PipelineSchedule(string name, int stages, int chunks, int microBatches, bool training, IReadOnlyList<IReadOnlyList<PipelineAction>> actions)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(actions);
        CheckShape(stages, chunks, microBatches);
        if (actions.Count != stages)
            throw new ArgumentException($"pipeline schedule '{name}': {actions.Count} action lists for {stages} stages");
        Name = name;
        Stages = stages;
        Chunks = chunks;
        MicroBatches = microBatches;
        IsTraining = training;
        _actions = actions.Select(a => a.ToArray()).ToArray();
    }

    /// <summary>Name for messages and timelines ("1F1B", "interleaved 1F1B", ...).</summary>
    public string Name { get; }

    /// <summary>Ranks p.</summary>
    public int Stages { get; }

    /// <summary>Model chunks (virtual stages) per rank, v.</summary>
    public int Chunks { get; }

    /// <summary>Micro-batches per step, m.</summary>
    public int MicroBatches { get; }

    /// <summary>Whether the schedule trains (forwards and backwards, then the optimizer step) rather than only evaluates.</summary>
    public bool IsTraining { get; }

    /// <summary>Virtual stages over all ranks, p x v.</summary>
    public int VirtualStageCount => Stages * Chunks;

    /// <summary>The rank that runs virtual stage <paramref name="virtualStage"/>.</summary>
    public int StageOf(int virtualStage) => virtualStage % Stages;

    /// <summary>Rank <paramref name="stage"/>'s actions in order.</summary>
    public IReadOnlyList<PipelineAction> ActionsOf(int stage)
    {
        if (stage < 0 || stage >= Stages) throw new ArgumentOutOfRangeException(nameof(stage), $"pipeline schedule '{Name}': stage {stage} is outside [0, {Stages})");
        return _actions[stage];
    }

    /// <summary>The generated schedule of <paramref name="kind"/> over <paramref name="stages"/> ranks of <paramref name="chunks"/> chunks and <paramref name="microBatches"/> micro-batches.</summary>
    public static PipelineSchedule Create(PipelineScheduleKind kind, int stages, int chunks, int microBatches) => kind switch
    {
        PipelineScheduleKind.GPipe => GPipe(stages, microBatches, chunks),
        PipelineScheduleKind.OneForwardOneBackward => OneForwardOneBackward(stages, microBatches, chunks),
        PipelineScheduleKind.Interleaved => Interleaved(stages, chunks, microBatches),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown pipeline schedule"),
    };

    /// <summary>GPipe: all m forwards, then all m backwards, on each rank (one chunk per rank).</summary>
    public static PipelineSchedule GPipe(int stages, int microBatches, int chunks = 1)
    {
        CheckOneChunk("GPipe", chunks);
        CheckShape(stages, 1, microBatches);
        return Build("GPipe", stages, 1, microBatches, r =>
        {
            var order = new List<PipelineAction>();
            for (int m = 0; m < microBatches; m++) order.Add(PipelineAction.Forward(r, m));
            for (int m = 0; m < microBatches; m++) order.Add(PipelineAction.Backward(r, m));
            return order;
        });
    }

    /// <summary>
    /// 1F1B (PipeDream-Flush, Megatron's non-interleaved schedule): rank s runs min(p - s - 1, m) warmup forwards, then one
    /// forward and one backward in turn, then the remaining backwards; at most p - s micro-batches are in flight on rank s.
    /// </summary>
    public static PipelineSchedule OneForwardOneBackward(int stages, int microBatches, int chunks = 1)
    {
        CheckOneChunk("1F1B", chunks);
        CheckShape(stages, 1, microBatches);
        return Build("1F1B", stages, 1, microBatches, r =>
        {
            int warmup = Math.Min(stages - r - 1, microBatches), remaining = microBatches - warmup;
            var order = new List<PipelineAction>();
            for (int m = 0; m < warmup; m++) order.Add(PipelineAction.Forward(r, m));
            for (int i = 0; i < remaining; i++)
            {
                order.Add(PipelineAction.Forward(r, warmup + i));
                order.Add(PipelineAction.Backward(r, i));
            }
            for (int m = remaining; m < microBatches; m++) order.Add(PipelineAction.Backward(r, m));
            return order;
        });
    }

    /// <summary>
    /// Interleaved 1F1B (Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters", Megatron-LM's
    /// forward_backward_pipelining_with_interleaving): each rank holds <paramref name="chunks"/> model chunks; micro-batches go
    /// through a rank's chunks in groups of p, so the pipeline fills v times faster and the bubble shrinks by v. Rank s warms up
    /// with (p - s - 1) x 2 + (v - 1) x p forwards (all of them when m = p), then alternates; <paramref name="microBatches"/> must
    /// be a multiple of <paramref name="stages"/>, which must be at least 2.
    /// </summary>
    public static PipelineSchedule Interleaved(int stages, int chunks, int microBatches)
    {
        CheckShape(stages, chunks, microBatches);
        if (chunks == 1) return OneForwardOneBackward(stages, microBatches);
        if (stages < 2)
            throw new ArgumentException($"interleaved 1F1B: pp ({stages}) must be at least 2; with one stage there is no bubble to shrink");
        if (microBatches % stages != 0)
            throw new ArgumentException($"interleaved 1F1B: the micro-batches per step ({microBatches}) must be a multiple of pp ({stages}): micro-batches go through each rank's chunks in groups of pp; " +
                $"use {Math.Max(stages, microBatches / stages * stages)} or {(microBatches / stages + 1) * stages}");
        var lists = Enumerable.Range(0, stages).Select(r => (IReadOnlyList<PipelineAction>)InterleavedRank(stages, chunks, microBatches, r)).ToList();
        return new PipelineSchedule("interleaved 1F1B", stages, chunks, microBatches, training: true, lists);
    }

    /// <summary>
    /// Rank <paramref name="r"/>'s actions of the interleaved schedule, written as Megatron-LM's loop runs them. Its forward k
    /// is model chunk (k mod p v) / p of micro-batch (k / p v) p + k mod p, its backward k the mirror chunk. Communication is in
    /// lock step with the neighbours: during the warmup a receive precedes the forward that needs it; in the steady state a rank
    /// runs one forward and one backward, then exchanges in one batch the activation and the gradient they produced and the
    /// activation and gradient its neighbours produced in the same step (the first and last ranks look p - 1 forwards back to
    /// know which chunk the ring delivers); the cooldown receives just in time again. A receive is written for the chunk it feeds;
    /// its micro-batch is that of the chunk's next forward (or backward) still without input, since each chunk consumes its inputs
    /// in order.
    /// </summary>
    private static List<PipelineAction> InterleavedRank(int p, int v, int m, int r)
    {
        int total = m * v, group = p * v, lastStage = p * v - 1;
        bool allWarmup = m == p, firstRank = r == 0, lastRank = r == p - 1;
        int warmup = allWarmup ? total : Math.Min((p - r - 1) * 2 + (v - 1) * p, total), remaining = total - warmup;
        int Chunk(int k, bool forward)
        {
            int c = (k % group + group) % group / p;                 // Python's modulo: the look-back may reach before 0
            return forward ? c : v - 1 - c;
        }
        int MicroBatch(int k) => k / group * p + k % p;
        int Stage(int chunk) => chunk * p + r;
        var list = new List<PipelineAction>();
        void Forward(int k) => list.Add(PipelineAction.Forward(Stage(Chunk(k, true)), MicroBatch(k)));
        void Backward(int k) => list.Add(PipelineAction.Backward(Stage(Chunk(k, false)), MicroBatch(k)));
        void SendActivation(int k)
        {
            int s = Stage(Chunk(k, true));
            if (s < lastStage) list.Add(new(PipelineActionKind.SendActivation, s, MicroBatch(k)));
        }
        void SendGradient(int k)
        {
            int s = Stage(Chunk(k, false));
            if (s > 0) list.Add(new(PipelineActionKind.SendGradient, s, MicroBatch(k)));
        }
        // Receives name their chunk now and their micro-batch below (-1 until then).
        void ReceiveActivation(int chunk) => list.Add(new(PipelineActionKind.ReceiveActivation, Stage(chunk), -1));
        void ReceiveGradient(int chunk) => list.Add(new(PipelineActionKind.ReceiveGradient, Stage(chunk), -1));

        if (Stage(Chunk(0, true)) > 0) ReceiveActivation(Chunk(0, true));
        for (int k = 0; k < warmup; k++)
        {
            Forward(k);
            SendActivation(k);
            bool receivePrevious = k + 1 < total && !(firstRank && Chunk(k + 1, true) == 0);
            if (receivePrevious) ReceiveActivation(Chunk(k + 1, true));
            if (k == warmup - 1 && !allWarmup && !lastRank) ReceiveGradient(v - 1);
        }
        for (int k = 0; k < remaining; k++)
        {
            int f = k + warmup;
            Forward(f);
            Backward(k);
            SendActivation(f);
            SendGradient(k);
            bool receivePrevious = true, receiveNext = true;
            int nextForward, nextBackward;
            if (firstRank)
            {
                // The first rank is p - 1 forwards ahead of the last, whose output it receives.
                nextForward = Chunk(f - (p - 1), true);
                if (nextForward == v - 1) receivePrevious = false;
                nextForward++;
            }
            else nextForward = Chunk(f + 1, true);
            if (lastRank)
            {
                nextBackward = Chunk(k - (p - 1), false);
                if (nextBackward == 0) receiveNext = false;
                nextBackward--;
            }
            else nextBackward = Chunk(k + 1, false);
            if (k == remaining - 1) receivePrevious = false;
            if (receivePrevious) ReceiveActivation(nextForward);
            if (receiveNext) ReceiveGradient(nextBackward);
        }
        if (allWarmup && !lastRank) ReceiveGradient(v - 1);
        for (int k = remaining; k < total; k++)
        {
            Backward(k);
            SendGradient(k);
            if (k + 1 < total && !(lastRank && Chunk(k + 1, false) == v - 1)) ReceiveGradient(Chunk(k + 1, false));
        }
        list.Add(PipelineAction.OptimizerStep);

        // Each chunk consumes its received inputs in order: the n-th receive for a chunk feeds its n-th forward (or backward).
        var forwards = new Dictionary<int, Queue<int>>();
        var backwards = new Dictionary<int, Queue<int>>();
        foreach (var a in list)
        {
            var table = a.Kind == PipelineActionKind.Forward ? forwards : a.Kind == PipelineActionKind.Backward ? backwards : null;
            if (table is null) continue;
            if (!table.TryGetValue(a.VirtualStage, out var queue)) table[a.VirtualStage] = queue = new Queue<int>();
            queue.Enqueue(a.MicroBatch);
        }
        for (int i = 0; i < list.Count; i++)
        {
            var a = list[i];
            if (a.MicroBatch >= 0 || !a.IsCommunication) continue;
            var table = a.Kind == PipelineActionKind.ReceiveActivation ? forwards : backwards;
            if (!table.TryGetValue(a.VirtualStage, out var queue) || queue.Count == 0)
                throw new InvalidOperationException($"interleaved 1F1B (pp {p}, v {v}, m {m}): rank {r} receives more for virtual stage {a.VirtualStage} than it computes");
            list[i] = a with { MicroBatch = queue.Dequeue() };
        }
        return list;
    }

    /// <summary>An evaluation pass: every micro-batch forward through every virtual stage, in order, with no backward and no update.</summary>
    public static PipelineSchedule ForwardOnly(int stages, int chunks, int microBatches)
    {
        CheckShape(stages, chunks, microBatches);
        if (chunks > 1 && stages < 2) throw new ArgumentException($"pipeline: {chunks} model chunks need pp of at least 2");
        return Build("forward only", stages, chunks, microBatches, r =>
        {
            var order = new List<PipelineAction>();
            // Micro-batch by micro-batch, chunk by chunk: the order in which their inputs arrive.
            for (int m = 0; m < microBatches; m++)
                for (int c = 0; c < chunks; c++) order.Add(PipelineAction.Forward(c * stages + r, m));
            return order;
        }, training: false);
    }

    /// <summary>Rank <paramref name="stage"/>'s actions in compact form ("RA0@1 F0@1 SA0@1 ...").</summary>
    public string Describe(int stage) => string.Join(" ", ActionsOf(stage));

    /// <inheritdoc/>
    public override string ToString() => $"{Name}, pp {Stages}{(Chunks > 1 ? $" x v {Chunks}" : "")}, {MicroBatches} micro-batches";

    /// <summary>
    /// A schedule from each rank's compute order: a receive right before the compute that needs its message, a send right after
    /// the compute that produced it (consecutive sends and receives then form one batch), the optimizer step last.
    /// </summary>
    private static PipelineSchedule Build(string name, int stages, int chunks, int microBatches, Func<int, List<PipelineAction>> computeOrder, bool training = true)
    {
        int last = stages * chunks - 1;
        var lists = new List<IReadOnlyList<PipelineAction>>(stages);
        for (int r = 0; r < stages; r++)
        {
            var actions = new List<PipelineAction>();
            foreach (var c in computeOrder(r))
            {
                int s = c.VirtualStage, m = c.MicroBatch;
                if (c.Kind == PipelineActionKind.Forward)
                {
                    if (s > 0) actions.Add(new(PipelineActionKind.ReceiveActivation, s, m));
                    actions.Add(c);
                    if (s < last) actions.Add(new(PipelineActionKind.SendActivation, s, m));
                }
                else
                {
                    if (s < last) actions.Add(new(PipelineActionKind.ReceiveGradient, s, m));
                    actions.Add(c);
                    if (s > 0) actions.Add(new(PipelineActionKind.SendGradient, s, m));
                }
            }
            if (training) actions.Add(PipelineAction.OptimizerStep);
            lists.Add(actions);
        }
        return new PipelineSchedule(name, stages, chunks, microBatches, training, lists);
    }

    private static void CheckOneChunk(string name, int chunks)
    {
        if (chunks != 1)
            throw new ArgumentException($"{name}: one model chunk per rank (virtual stages {chunks}); interleaving needs the interleaved 1F1B schedule");
    }

    private static void CheckShape(int stages, int chunks, int microBatches)
    {
        if (stages < 1) throw new ArgumentException($"pipeline schedule: pp ({stages}) must be at least 1");
        if (chunks < 1) throw new ArgumentException($"pipeline schedule: virtual stages per rank ({chunks}) must be at least 1");
        if (microBatches < 1) throw new ArgumentException($"pipeline schedule: micro-batches per step ({microBatches}) must be at least 1");
    }
}
