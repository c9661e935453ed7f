using System.Globalization;

namespace Tessera.Training.Pipeline;

/// <summary>
/// Checks a <see cref="PipelineSchedule"/> before it runs and computes its timeline. The model is NCCL's, the strictest the
/// executor meets: each rank's computes run in list order on its compute stream and its communication batches (runs of
/// consecutive sends and receives) in list order on its communication stream; a batch starts once the previous batch has
/// completed and the computes listed before it have ended (the data it sends is ready); a send and its receive transfer once
/// both their batches have started; a batch completes when all its transfers have; a compute starts once the previous compute
/// has ended and the batch holding each receive it needs has completed. Point-to-point messages between two ranks pair in issue
/// order (NCCL's and the in-process groups' rule), so the k-th send from rank a to rank b must be the message the k-th receive
/// on b from a expects, or data would be silently mixed up. A schedule that satisfies this model also runs on CPU thread
/// ranks, whose sends never block.
/// </summary>
public static class PipelineSimulator
{
    /// <summary>
    /// Throws <see cref="PipelineScheduleException"/> naming the rank, the action and the micro-batch when
    /// <paramref name="schedule"/> would not run: a compute missing, repeated, on a virtual stage of another rank or before its
    /// input arrives; a send or receive missing or unpaired; the optimizer step not last; or a deadlock.
    /// </summary>
    public static void Validate(PipelineSchedule schedule) => Simulate(schedule, PipelineCosts.Uniform(schedule.VirtualStageCount));

    /// <summary>The (idle fraction of the) formula the schedule is known for, with equal stages and free communication.</summary>
    public static double IdealIdleFraction(PipelineSchedule schedule)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        int p = schedule.Stages, v = schedule.Chunks, m = schedule.MicroBatches;
        return (p - 1) / (double)(v * m + p - 1);
    }

    /// <summary>Validates <paramref name="schedule"/> (see <see cref="Validate"/>) and times it under <paramref name="costs"/>.</summary>
    public static PipelineTimeline Simulate(PipelineSchedule schedule, PipelineCosts costs)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        ArgumentNullException.ThrowIfNull(costs);
        if (costs.VirtualStages != schedule.VirtualStageCount)
            throw new ArgumentException($"pipeline costs cover {costs.VirtualStages} virtual stages, the schedule has {schedule.VirtualStageCount}");
        var peaks = new int[schedule.Stages];
        for (int r = 0; r < schedule.Stages; r++) peaks[r] = CheckRank(schedule, r);
        var batches = Enumerable.Range(0, schedule.Stages).Select(r => BatchesOf(schedule.ActionsOf(r))).ToArray();
        var peers = Pair(schedule, batches);
        return Time(schedule, costs, batches, peers, peaks);
    }

    /// <summary>A run of consecutive communication actions of one rank: [First, First + Count) of its list.</summary>
    private sealed record Batch(int Rank, int Index, int First, int Count, int LastComputeBefore);

    private static string Where(PipelineSchedule s, int rank) => $"pipeline schedule '{s}': rank {rank}";

    /// <summary>Per-rank checks: every action belongs here, occurs once, in a feasible order. Returns the most micro-batches in flight.</summary>
    private static int CheckRank(PipelineSchedule s, int r)
    {
        var actions = s.ActionsOf(r);
        int last = s.VirtualStageCount - 1;
        var seen = new Dictionary<PipelineAction, int>();
        int inFlight = 0, peak = 0;
        for (int i = 0; i < actions.Count; i++)
        {
            var a = actions[i];
            string at = $"{Where(s, r)}, action {i} ({a})";
            if (a.Kind == PipelineActionKind.OptimizerStep)
            {
                if (!s.IsTraining) throw new PipelineScheduleException($"{at}: a forward-only schedule takes no optimizer step");
                if (i != actions.Count - 1) throw new PipelineScheduleException($"{at}: the optimizer step must be the rank's last action (it has {actions.Count - 1 - i} after it)");
                continue;
            }
            if (a.VirtualStage < 0 || a.VirtualStage > last || s.StageOf(a.VirtualStage) != r)
                throw new PipelineScheduleException($"{at}: virtual stage {a.VirtualStage} is not on this rank (rank r runs virtual stages r, r + {s.Stages}, ... below {last + 1})");
            if (a.MicroBatch < 0 || a.MicroBatch >= s.MicroBatches)
                throw new PipelineScheduleException($"{at}: micro-batch {a.MicroBatch} is outside [0, {s.MicroBatches})");
            if (!s.IsTraining && a.Kind is PipelineActionKind.Backward or PipelineActionKind.SendGradient or PipelineActionKind.ReceiveGradient)
                throw new PipelineScheduleException($"{at}: a forward-only schedule has no backward pass");
            if (!seen.TryAdd(a, i)) throw new PipelineScheduleException($"{at}: {a.Describe()} appears twice (actions {seen[a]} and {i})");
            bool Before(PipelineActionKind kind) => seen.ContainsKey(new PipelineAction(kind, a.VirtualStage, a.MicroBatch));
            switch (a.Kind)
            {
                case PipelineActionKind.Forward:
                    if (a.VirtualStage > 0 && !Before(PipelineActionKind.ReceiveActivation))
                        throw new PipelineScheduleException($"{at}: {a.Describe()} comes before receiving its input activation");
                    if (++inFlight > peak) peak = inFlight;
                    break;
                case PipelineActionKind.Backward:
                    if (!Before(PipelineActionKind.Forward)) throw new PipelineScheduleException($"{at}: {a.Describe()} comes before its forward");
                    if (a.VirtualStage < last && !Before(PipelineActionKind.ReceiveGradient))
                        throw new PipelineScheduleException($"{at}: {a.Describe()} comes before receiving its output gradient");
                    inFlight--;
                    break;
                case PipelineActionKind.SendActivation:
                    if (a.VirtualStage == last) throw new PipelineScheduleException($"{at}: the last virtual stage sends no activation (its output is the loss)");
                    if (!Before(PipelineActionKind.Forward)) throw new PipelineScheduleException($"{at}: {a.Describe()} comes before the forward that computes it");
                    break;
                case PipelineActionKind.ReceiveActivation:
                    if (a.VirtualStage == 0) throw new PipelineScheduleException($"{at}: the first virtual stage receives no activation (its input is the tokens)");
                    break;
                case PipelineActionKind.SendGradient:
                    if (a.VirtualStage == 0) throw new PipelineScheduleException($"{at}: the first virtual stage sends no gradient");
                    if (!Before(PipelineActionKind.Backward)) throw new PipelineScheduleException($"{at}: {a.Describe()} comes before the backward that computes it");
                    break;
                case PipelineActionKind.ReceiveGradient:
                    if (a.VirtualStage == last) throw new PipelineScheduleException($"{at}: the last virtual stage receives no gradient (its gradient is the loss's)");
                    break;
            }
        }
        // Completeness: every micro-batch's forward (and backward) on each of this rank's virtual stages, with its messages.
        for (int c = 0; c < s.Chunks; c++)
        {
            int vs = c * s.Stages + r;
            for (int m = 0; m < s.MicroBatches; m++)
            {
                void Need(PipelineActionKind kind, bool needed)
                {
                    var a = new PipelineAction(kind, vs, m);
                    if (needed && !seen.ContainsKey(a))
                        throw new PipelineScheduleException($"{Where(s, r)}: {a.Describe()} is missing");
                }
                Need(PipelineActionKind.Forward, true);
                Need(PipelineActionKind.ReceiveActivation, vs > 0);
                Need(PipelineActionKind.SendActivation, vs < last);
                Need(PipelineActionKind.Backward, s.IsTraining);
                Need(PipelineActionKind.ReceiveGradient, s.IsTraining && vs < last);
                Need(PipelineActionKind.SendGradient, s.IsTraining && vs > 0);
            }
        }
        if (s.IsTraining && (actions.Count == 0 || actions[^1].Kind != PipelineActionKind.OptimizerStep))
            throw new PipelineScheduleException($"{Where(s, r)}: the training schedule does not end with the optimizer step");
        return peak;
    }

    private static List<Batch> BatchesOf(IReadOnlyList<PipelineAction> actions)
    {
        var batches = new List<Batch>();
        int lastCompute = -1;
        for (int i = 0; i < actions.Count;)
        {
            if (!actions[i].IsCommunication)
            {
                if (actions[i].IsCompute) lastCompute = i;
                i++;
                continue;
            }
            int start = i;
            while (i < actions.Count && actions[i].IsCommunication) i++;
            batches.Add(new Batch(-1, batches.Count, start, i - start, lastCompute));
        }
        return batches;
    }

    /// <summary>
    /// Pairs every send with the receive it meets: messages from rank a to rank b pair in issue order. Returns, per rank and
    /// action index, the (rank, batch) of the other end.
    /// </summary>
    private static Dictionary<(int Rank, int Action), (int Rank, int Batch)> Pair(PipelineSchedule s, List<Batch>[] batches)
    {
        int BatchOf(int rank, int action) => batches[rank].First(b => action >= b.First && action < b.First + b.Count).Index;
        // Per directed channel (from, to): the sends in the sender's order and the receives in the receiver's order.
        var sends = new Dictionary<(int From, int To), List<(int Action, PipelineAction A)>>();
        var receives = new Dictionary<(int From, int To), List<(int Action, PipelineAction A)>>();
        for (int r = 0; r < s.Stages; r++)
        {
            var actions = s.ActionsOf(r);
            for (int i = 0; i < actions.Count; i++)
            {
                var a = actions[i];
                if (!a.IsCommunication) continue;
                int peer = s.StageOf(a.PeerVirtualStage);
                if (peer == r)
                    throw new PipelineScheduleException($"{Where(s, r)}, action {i} ({a}): virtual stages {a.VirtualStage} and {a.PeerVirtualStage} are on the same rank; a schedule needs at least 2 stages to interleave");
                var key = a.IsSend ? (r, peer) : (peer, r);
                var table = a.IsSend ? sends : receives;
                if (!table.TryGetValue(key, out var list)) table[key] = list = [];
                list.Add((i, a));
            }
        }
        var result = new Dictionary<(int Rank, int Action), (int Rank, int Batch)>();
        foreach (var channel in sends.Keys.Union(receives.Keys))
        {
            var sent = sends.GetValueOrDefault(channel) ?? [];
            var received = receives.GetValueOrDefault(channel) ?? [];
            for (int k = 0; k < Math.Max(sent.Count, received.Count); k++)
            {
                string nth = Ordinal(k + 1);
                if (k >= received.Count)
                    throw new PipelineScheduleException($"pipeline schedule '{s}': rank {channel.From}'s {nth} message to rank {channel.To} ({sent[k].A.Describe()}, action {sent[k].Action}) is never received: rank {channel.To} receives only {received.Count} from rank {channel.From}");
                if (k >= sent.Count)
                    throw new PipelineScheduleException($"pipeline schedule '{s}': rank {channel.To}'s {nth} message from rank {channel.From} ({received[k].A.Describe()}, action {received[k].Action}) is never sent: rank {channel.From} sends only {sent.Count} to rank {channel.To}");
                var (si, sa) = sent[k];
                var (ri, ra) = received[k];
                if (sa.Counterpart != ra)
                    throw new PipelineScheduleException($"pipeline schedule '{s}': messages from rank {channel.From} to rank {channel.To} pair in issue order, and the {nth} pairs " +
                        $"{sa.Describe()} (rank {channel.From}, action {si}) with {ra.Describe()} (rank {channel.To}, action {ri}): the receive would get another micro-batch's tensor");
                result[(channel.From, si)] = (channel.To, BatchOf(channel.To, ri));
                result[(channel.To, ri)] = (channel.From, BatchOf(channel.From, si));
            }
        }
        return result;
    }

    /// <summary>Longest paths over the event graph (compute start/end, batch start/complete); a cycle is a deadlock.</summary>
    private static PipelineTimeline Time(PipelineSchedule s, PipelineCosts costs, List<Batch>[] batches, Dictionary<(int Rank, int Action), (int Rank, int Batch)> peers, int[] peaks)
    {
        // Node ids: per rank, per action index: compute start (2i) and end (2i + 1); per batch: start and complete.
        var ids = new Dictionary<(int Rank, char Kind, int Index), int>();
        var names = new List<string>();
        var edges = new List<List<(int To, double Weight)>>();
        int Node(int rank, char kind, int index)
        {
            if (ids.TryGetValue((rank, kind, index), out int id)) return id;
            id = names.Count;
            ids[(rank, kind, index)] = id;
            names.Add(Name(s, batches, rank, kind, index));
            edges.Add([]);
            return id;
        }
        void Edge(int from, int to, double weight) => edges[from].Add((to, weight));

        for (int r = 0; r < s.Stages; r++)
        {
            var actions = s.ActionsOf(r);
            int previous = -1;
            var receivedIn = new Dictionary<PipelineAction, int>();   // receive -> its batch
            foreach (var b in batches[r])
                for (int i = b.First; i < b.First + b.Count; i++)
                    if (!actions[i].IsSend) receivedIn[actions[i]] = b.Index;
            for (int i = 0; i < actions.Count; i++)
            {
                var a = actions[i];
                if (!a.IsCompute) continue;
                int start = Node(r, 's', i), end = Node(r, 'e', i);
                Edge(start, end, a.Kind == PipelineActionKind.Forward ? costs.Forward(a.VirtualStage) : costs.Backward(a.VirtualStage));
                if (previous >= 0) Edge(Node(r, 'e', previous), start, 0);
                var needs = a.Kind == PipelineActionKind.Forward
                    ? new PipelineAction(PipelineActionKind.ReceiveActivation, a.VirtualStage, a.MicroBatch)
                    : new PipelineAction(PipelineActionKind.ReceiveGradient, a.VirtualStage, a.MicroBatch);
                if (receivedIn.TryGetValue(needs, out int batch)) Edge(Node(r, 'C', batch), start, 0);
                previous = i;
            }
            foreach (var b in batches[r])
            {
                int start = Node(r, 'S', b.Index), complete = Node(r, 'C', b.Index);
                if (b.Index > 0) Edge(Node(r, 'C', b.Index - 1), start, 0);
                if (b.LastComputeBefore >= 0) Edge(Node(r, 'e', b.LastComputeBefore), start, 0);
                Edge(start, complete, costs.Transfer);
                for (int i = b.First; i < b.First + b.Count; i++)
                {
                    var (peer, peerBatch) = peers[(r, i)];
                    Edge(Node(peer, 'S', peerBatch), complete, costs.Transfer);
                }
            }
        }

        // Kahn's algorithm: longest path from the sources (time 0).
        var indegree = new int[names.Count];
        foreach (var list in edges) foreach (var (to, _) in list) indegree[to]++;
        var time = new double[names.Count];
        var ready = new Queue<int>(Enumerable.Range(0, names.Count).Where(n => indegree[n] == 0));
        int done = 0;
        while (ready.Count > 0)
        {
            int n = ready.Dequeue();
            done++;
            foreach (var (to, w) in edges[n])
            {
                time[to] = Math.Max(time[to], time[n] + w);
                if (--indegree[to] == 0) ready.Enqueue(to);
            }
        }
        if (done < names.Count) throw new PipelineScheduleException(DescribeDeadlock(s, names, edges, indegree));

        var compute = new List<IReadOnlyList<(PipelineAction, double, double)>>();
        for (int r = 0; r < s.Stages; r++)
        {
            var actions = s.ActionsOf(r);
            var list = new List<(PipelineAction, double, double)>();
            for (int i = 0; i < actions.Count; i++)
                if (actions[i].IsCompute) list.Add((actions[i], time[ids[(r, 's', i)]], time[ids[(r, 'e', i)]]));
            compute.Add(list);
        }
        return new PipelineTimeline(s, compute, peaks);
    }

    private static string Name(PipelineSchedule s, List<Batch>[] batches, int rank, char kind, int index)
    {
        var actions = s.ActionsOf(rank);
        return kind switch
        {
            's' or 'e' => $"rank {rank} {actions[index].Describe()} (action {index})",
            _ => $"rank {rank}'s batch of " + string.Join(" + ", Enumerable.Range(batches[rank][index].First, batches[rank][index].Count).Select(i => actions[i].ToString())) +
                 $" (actions {batches[rank][index].First}-{batches[rank][index].First + batches[rank][index].Count - 1})",
        };
    }

    /// <summary>Walks back from a node left waiting until a node repeats: the cycle of waits, as words.</summary>
    private static string DescribeDeadlock(PipelineSchedule s, List<string> names, List<List<(int To, double Weight)>> edges, int[] indegree)
    {
        var predecessors = new List<int>[names.Count];
        for (int n = 0; n < names.Count; n++) predecessors[n] = [];
        for (int n = 0; n < names.Count; n++)
            foreach (var (to, _) in edges[n])
                if (indegree[n] > 0 && indegree[to] > 0) predecessors[to].Add(n);
        int node = Array.FindIndex(indegree, d => d > 0);
        var path = new List<int>();
        var position = new Dictionary<int, int>();
        while (!position.ContainsKey(node))
        {
            position[node] = path.Count;
            path.Add(node);
            node = predecessors[node].First();
        }
        var cycle = path.Skip(position[node]).Reverse().Select(n => names[n]).ToList();
        return $"pipeline schedule '{s}' deadlocks under NCCL's in-order point-to-point semantics: " + string.Join(", which waits for ", cycle.Append(cycle[0])) +
            ". Issue the sends and receives that two neighbours exchange in one batch (no compute between them), as Megatron's send_forward_recv_backward does";
    }

    private static string Ordinal(int n) => n.ToString(CultureInfo.InvariantCulture) + ((n % 100) is 11 or 12 or 13 ? "th" : (n % 10) switch
    {
        1 => "st",
        2 => "nd",
        3 => "rd",
        _ => "th",
    });
}
