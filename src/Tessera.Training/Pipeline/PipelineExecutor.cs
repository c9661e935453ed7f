using System.Diagnostics;
using Tessera.Distributed;
using Tessera.Tensors;

namespace Tessera.Training.Pipeline;

/// <summary>
/// Runs one rank's list of a <see cref="PipelineSchedule"/>, any schedule, over the pipeline group (group rank = stage): each
/// run of consecutive sends and receives is issued as one batch (<see cref="ProcessGroup.SendReceive"/>: one NCCL group, so
/// neighbours that exchange both ways never deadlock), each compute waits for the receive it needs and runs the stage's forward
/// or backward. Messages have one shape, known ahead (the stage's <see cref="IPipelineStage.MessageBuffer"/>), so receives are
/// posted into their slot's buffer before the data exists. The schedule is checked by <see cref="PipelineSimulator"/> when the
/// executor is made, so a bad schedule fails on every rank before any message moves.
/// <para>
/// Slots: a (chunk, micro-batch) in flight takes the lowest free activation slot of its chunk at its forward and gives it back
/// after its backward (in a forward-only pass, once its output is sent), and a message slot (its received input and its
/// gradient) from its first message to its last. A slot is reused only after every send that reads its buffers has completed. A receive that waits past the group's timeout
/// fails with a <see cref="PipelineStallException"/> naming the stage, micro-batch and operation (in-process groups; an NCCL
/// stall shows at the next host wait).
/// </para>
/// </summary>
public sealed class PipelineExecutor
{
    private readonly PipelineAction[] _actions;
    private readonly bool[] _lastOfChunk;   // per action: a backward that is its chunk's last of the step

    /// <summary>
    /// The executor of stage <paramref name="group"/>.Rank of <paramref name="schedule"/>; validates the schedule first unless
    /// <paramref name="validate"/> is false (tests of what a bad schedule does).
    /// </summary>
    public PipelineExecutor(PipelineSchedule schedule, ProcessGroup group, bool validate = true)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        ArgumentNullException.ThrowIfNull(group);
        if (group.Size != schedule.Stages)
            throw new ArgumentException($"pipeline executor: the schedule '{schedule}' has {schedule.Stages} stages but the pipeline group '{group.Name}' has {group.Size} ranks");
        if (validate) PipelineSimulator.Validate(schedule);
        Schedule = schedule;
        Group = group;
        _actions = [.. schedule.ActionsOf(group.Rank)];
        _lastOfChunk = new bool[_actions.Length];
        var seen = new HashSet<int>();
        for (int i = _actions.Length - 1; i >= 0; i--)
            if (_actions[i].Kind == PipelineActionKind.Backward && seen.Add(_actions[i].VirtualStage)) _lastOfChunk[i] = true;
    }

    /// <summary>The schedule run.</summary>
    public PipelineSchedule Schedule { get; }

    /// <summary>The pipeline group.</summary>
    public ProcessGroup Group { get; }

    /// <summary>This rank's stage.</summary>
    public int Stage => Group.Rank;

    /// <summary>Runs this rank's actions once with <paramref name="stage"/>'s compute, up to the optimizer step (not taken here).</summary>
    public PipelineRunStatistics Run(IPipelineStage stage)
    {
        ArgumentNullException.ThrowIfNull(stage);
        var run = new ScheduleRun(this, stage);
        return run.Execute();
    }

    private string Where(PipelineAction action) =>
        $"pipeline stage {Stage} of {Schedule.Stages} ({Group.Describe()}), {action.Describe()}";

    /// <summary>The slots of one kind, per model chunk: the lowest free one is taken; one is reused only after the sends reading it complete.</summary>
    private sealed class SlotPool(PipelineExecutor executor, int chunks, int perChunk, string what)
    {
        private readonly bool[][] _inUse = Enumerable.Range(0, chunks).Select(_ => new bool[perChunk]).ToArray();
        private readonly Dictionary<(int Stage, int MicroBatch), int> _slotOf = [];
        private readonly Dictionary<int, List<(CollectiveHandle Handle, PipelineAction Action)>> _pending = [];
        private int _inUseCount;

        public int Peak { get; private set; }

        public int[] PeakPerChunk { get; } = new int[chunks];

        public bool Holds(PipelineAction a) => _slotOf.ContainsKey((a.VirtualStage, a.MicroBatch));

        public int this[PipelineAction a] => _slotOf.TryGetValue((a.VirtualStage, a.MicroBatch), out int slot)
            ? slot
            : throw new InvalidOperationException($"{executor.Where(a)}: no {what} slot is held for it");

        public int Acquire(PipelineAction a, Action<CollectiveHandle, PipelineAction> wait)
        {
            int chunk = a.VirtualStage / executor.Schedule.Stages;
            var inUse = _inUse[chunk];
            int index = Array.IndexOf(inUse, false);
            if (index < 0) throw new InvalidOperationException($"{executor.Where(a)}: every {what} slot of model chunk {chunk} is in use");
            inUse[index] = true;
            int slot = chunk * perChunk + index;
            if (_pending.Remove(slot, out var sends))
                foreach (var (handle, action) in sends) wait(handle, action);
            _slotOf[(a.VirtualStage, a.MicroBatch)] = slot;
            PeakPerChunk[chunk] = Math.Max(PeakPerChunk[chunk], inUse.Count(u => u));
            Peak = Math.Max(Peak, ++_inUseCount);
            return slot;
        }

        public int Free(PipelineAction a)
        {
            int slot = this[a];
            _slotOf.Remove((a.VirtualStage, a.MicroBatch));
            _inUse[slot / perChunk][slot % perChunk] = false;
            _inUseCount--;
            return slot;
        }

        public void Reading(int slot, CollectiveHandle handle, PipelineAction send)
        {
            if (!_pending.TryGetValue(slot, out var list)) _pending[slot] = list = [];
            list.Add((handle, send));
        }

        public void WaitAll(Action<CollectiveHandle, PipelineAction> wait)
        {
            foreach (var sends in _pending.Values)
                foreach (var (handle, action) in sends) wait(handle, action);
            _pending.Clear();
        }
    }

    /// <summary>
    /// The state of one run of the list. A (virtual stage, micro-batch) holds two slots: an activation slot from its forward to
    /// the end of its backward (what its layers save: the memory a schedule keeps in flight), and a message slot from its first
    /// message to its last (its received input activation and its gradient, in place; two residual-stream rows). Keeping them
    /// apart lets the input of the next micro-batch be received while the last one's gradient is still being sent, without
    /// holding a whole micro-batch's activations more.
    /// </summary>
    private sealed class ScheduleRun(PipelineExecutor executor, IPipelineStage stage)
    {
        private readonly PipelineSchedule _s = executor.Schedule;
        private readonly SlotPool _activations = new(executor, executor.Schedule.Chunks, executor.Schedule.MicroBatches, "activation");
        private readonly SlotPool _messages = new(executor, executor.Schedule.Chunks, executor.Schedule.MicroBatches + 1, "message");
        private readonly Dictionary<PipelineAction, (CollectiveHandle Handle, Tensor Buffer)> _receives = [];
        private readonly Dictionary<(int Stage, int MicroBatch), Tensor> _outputs = [];
        private double _computeMs, _waitMs;

        public PipelineRunStatistics Execute()
        {
            var clock = Stopwatch.StartNew();
            var actions = executor._actions;
            int last = _s.VirtualStageCount - 1;
            for (int i = 0; i < actions.Length;)
            {
                var a = actions[i];
                if (a.IsCommunication)
                {
                    int end = i;
                    while (end < actions.Length && actions[end].IsCommunication) end++;
                    Exchange(actions.AsSpan(i, end - i));
                    i = end;
                    continue;
                }
                int chunk = a.VirtualStage / _s.Stages;
                var key = (a.VirtualStage, a.MicroBatch);
                switch (a.Kind)
                {
                    case PipelineActionKind.Forward:
                    {
                        Tensor? input = a.VirtualStage == 0 ? null : Received(new PipelineAction(PipelineActionKind.ReceiveActivation, a.VirtualStage, a.MicroBatch));
                        int slot = _activations.Acquire(a, Wait);
                        long start = Stopwatch.GetTimestamp();
                        var output = stage.Forward(chunk, a.MicroBatch, slot, input);
                        _computeMs += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        if (a.VirtualStage < last)
                            _outputs[key] = output ?? throw new InvalidOperationException($"{executor.Where(a)}: the stage returned no activation to send");
                        if (!_s.IsTraining)
                        {
                            // Nothing more reads the input; the activations are kept only while the output is being sent.
                            if (_messages.Holds(a)) _messages.Free(a);
                            if (a.VirtualStage == last) stage.Release(_activations.Free(a));
                        }
                        break;
                    }
                    case PipelineActionKind.Backward:
                    {
                        var gradient = a.VirtualStage == last
                            ? stage.MessageBuffer(MessageSlot(a), gradient: true)
                            : Received(new PipelineAction(PipelineActionKind.ReceiveGradient, a.VirtualStage, a.MicroBatch));
                        long start = Stopwatch.GetTimestamp();
                        stage.Backward(chunk, a.MicroBatch, _activations[a], gradient, executor._lastOfChunk[i]);
                        _computeMs += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        _activations.Free(a);
                        if (a.VirtualStage == 0) _messages.Free(a);
                        break;
                    }
                }
                i++;
            }
            _activations.WaitAll(Wait);
            _messages.WaitAll(Wait);
            if (_receives.Count > 0)
                throw new InvalidOperationException($"pipeline stage {executor.Stage}: {_receives.Count} received messages were never used ({string.Join(", ", _receives.Keys)})");
            return new PipelineRunStatistics(clock.Elapsed.TotalMilliseconds, _computeMs, _waitMs, _activations.Peak, _activations.PeakPerChunk, _messages.Peak);
        }

        /// <summary>The message slot of <paramref name="a"/>'s (virtual stage, micro-batch): the one its receive took, else a new one (the first virtual stage receives no input).</summary>
        private int MessageSlot(PipelineAction a) => _messages.Holds(a) ? _messages[a] : _messages.Acquire(a, Wait);

        /// <summary>Issues a run of sends and receives as one batch.</summary>
        private void Exchange(ReadOnlySpan<PipelineAction> batch)
        {
            var ops = new List<PointToPoint>(batch.Length);
            foreach (var a in batch)
            {
                var key = (a.VirtualStage, a.MicroBatch);
                int peer = _s.StageOf(a.PeerVirtualStage);
                ops.Add(a.Kind switch
                {
                    PipelineActionKind.SendActivation => PointToPoint.Send(_outputs[key], peer),
                    PipelineActionKind.SendGradient => PointToPoint.Send(stage.MessageBuffer(_messages[a], gradient: true), peer),
                    PipelineActionKind.ReceiveActivation => PointToPoint.Receive(stage.MessageBuffer(_messages.Acquire(a, Wait), gradient: false), peer),
                    _ => PointToPoint.Receive(stage.MessageBuffer(MessageSlot(a), gradient: true), peer),
                });
            }
            IReadOnlyList<CollectiveHandle> handles;
            try
            {
                handles = executor.Group.SendReceive(ops);
            }
            catch (Exception e) when (e is not PipelineStallException)
            {
                throw new InvalidOperationException($"{executor.Where(batch[0])}: issuing {string.Join(", ", batch.ToArray().Select(a => a.Describe()))} failed: {e.Message}", e);
            }
            for (int k = 0; k < batch.Length; k++)
            {
                var a = batch[k];
                switch (a.Kind)
                {
                    case PipelineActionKind.SendActivation:
                        _outputs.Remove((a.VirtualStage, a.MicroBatch));
                        _activations.Reading(_activations[a], handles[k], a);
                        if (!_s.IsTraining) stage.Release(_activations.Free(a));   // reused once the send completes
                        break;
                    case PipelineActionKind.SendGradient:
                        _messages.Reading(_messages.Free(a), handles[k], a);      // its last action: reused once the send completes
                        break;
                    default:
                        _receives[a] = (handles[k], ops[k].Tensor);
                        break;
                }
            }
        }

        /// <summary>Waits for the receive <paramref name="receive"/> and returns its buffer.</summary>
        private Tensor Received(PipelineAction receive)
        {
            if (!_receives.Remove(receive, out var entry))
                throw new InvalidOperationException($"{executor.Where(receive)}: the receive was never issued");
            Wait(entry.Handle, receive);
            return entry.Buffer;
        }

        private void Wait(CollectiveHandle handle, PipelineAction action)
        {
            long start = Stopwatch.GetTimestamp();
            try
            {
                handle.WaitOnDevice();
            }
            catch (CollectiveTimeoutException e)
            {
                int peer = _s.StageOf(action.PeerVirtualStage);
                throw new PipelineStallException(
                    $"{executor.Where(action)}: waited {e.Waited.TotalMilliseconds:F0} ms for stage {peer} (virtual stage {action.PeerVirtualStage}) without the message arriving. " +
                    $"Stage {peer} is stuck or failed before it reached the matching {(action.IsSend ? "receive" : "send")}; see its own error. ({e.Message})", e);
            }
            finally
            {
                _waitMs += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
        }
    }
}
