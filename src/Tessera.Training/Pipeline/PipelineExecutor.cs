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
/// Slots: the (chunk, micro-batch) pairs in flight take the lowest free slot of their chunk when their first action comes (the
/// receive of their input, or the forward on the first virtual stage) and give it back once their last action is issued (the
/// send of their input gradient, or the backward on the first virtual stage; in a forward-only pass, the send of their output).
/// A slot is reused only after every send that reads its buffers has completed. A receive that waits past the group's timeout
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

    /// <summary>The state of one run of the list.</summary>
    private sealed class ScheduleRun(PipelineExecutor executor, IPipelineStage stage)
    {
        private readonly PipelineSchedule _s = executor.Schedule;
        private readonly Dictionary<(int Stage, int MicroBatch), int> _slotOf = [];
        private readonly Dictionary<int, List<(CollectiveHandle Handle, PipelineAction Action)>> _pendingSends = [];
        private readonly Dictionary<PipelineAction, (CollectiveHandle Handle, Tensor Buffer)> _receives = [];
        private readonly Dictionary<(int Stage, int MicroBatch), Tensor> _outputs = [];
        private readonly bool[][] _inUse = Enumerable.Range(0, executor.Schedule.Chunks).Select(_ => new bool[executor.Schedule.MicroBatches]).ToArray();
        private readonly int[] _peakPerChunk = new int[executor.Schedule.Chunks];
        private int _slotsInUse, _peak;
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
                        int slot = a.VirtualStage == 0 ? Acquire(a) : _slotOf[key];
                        Tensor? input = a.VirtualStage == 0 ? null : Received(new PipelineAction(PipelineActionKind.ReceiveActivation, a.VirtualStage, a.MicroBatch));
                        long start = Stopwatch.GetTimestamp();
                        var output = stage.Forward(chunk, a.MicroBatch, slot, input);
                        _computeMs += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        if (a.VirtualStage < last)
                            _outputs[key] = output ?? throw new InvalidOperationException($"{executor.Where(a)}: the stage returned no activation to send");
                        else if (!_s.IsTraining) Free(a);
                        break;
                    }
                    case PipelineActionKind.Backward:
                    {
                        int slot = _slotOf[key];
                        var gradient = a.VirtualStage == last
                            ? stage.MessageBuffer(slot, gradient: true)
                            : Received(new PipelineAction(PipelineActionKind.ReceiveGradient, a.VirtualStage, a.MicroBatch));
                        long start = Stopwatch.GetTimestamp();
                        stage.Backward(chunk, a.MicroBatch, slot, gradient, executor._lastOfChunk[i]);
                        _computeMs += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        if (a.VirtualStage == 0) Free(a);
                        break;
                    }
                }
                i++;
            }
            foreach (var (slot, sends) in _pendingSends)
                foreach (var (handle, action) in sends) Wait(handle, action);
            _pendingSends.Clear();
            if (_receives.Count > 0)
                throw new InvalidOperationException($"pipeline stage {executor.Stage}: {_receives.Count} received messages were never used ({string.Join(", ", _receives.Keys)})");
            return new PipelineRunStatistics(clock.Elapsed.TotalMilliseconds, _computeMs, _waitMs, _peak, [.. _peakPerChunk]);
        }

        /// <summary>Issues a run of sends and receives as one batch.</summary>
        private void Exchange(ReadOnlySpan<PipelineAction> batch)
        {
            var ops = new List<PointToPoint>(batch.Length);
            var slots = new List<int>(batch.Length);
            foreach (var a in batch)
            {
                var key = (a.VirtualStage, a.MicroBatch);
                int peer = _s.StageOf(a.PeerVirtualStage);
                switch (a.Kind)
                {
                    case PipelineActionKind.SendActivation:
                        ops.Add(PointToPoint.Send(_outputs[key], peer));
                        _outputs.Remove(key);
                        slots.Add(_slotOf[key]);
                        break;
                    case PipelineActionKind.SendGradient:
                        ops.Add(PointToPoint.Send(stage.MessageBuffer(_slotOf[key], gradient: true), peer));
                        slots.Add(_slotOf[key]);
                        break;
                    case PipelineActionKind.ReceiveActivation:
                    {
                        int slot = Acquire(a);
                        ops.Add(PointToPoint.Receive(stage.MessageBuffer(slot, gradient: false), peer));
                        slots.Add(slot);
                        break;
                    }
                    case PipelineActionKind.ReceiveGradient:
                        ops.Add(PointToPoint.Receive(stage.MessageBuffer(_slotOf[key], gradient: true), peer));
                        slots.Add(_slotOf[key]);
                        break;
                }
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
                if (a.IsSend)
                {
                    if (!_pendingSends.TryGetValue(slots[k], out var list)) _pendingSends[slots[k]] = list = [];
                    list.Add((handles[k], a));
                    // The pair's last action is issued: its slot is free once the send completes (Acquire waits for it).
                    if (a.Kind == PipelineActionKind.SendGradient || !_s.IsTraining) Free(a);
                }
                else _receives[a] = (handles[k], ops[k].Tensor);
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

        /// <summary>The lowest free slot of the action's chunk, once the sends still reading it have completed.</summary>
        private int Acquire(PipelineAction a)
        {
            int chunk = a.VirtualStage / _s.Stages;
            var inUse = _inUse[chunk];
            int index = Array.IndexOf(inUse, false);
            if (index < 0) throw new InvalidOperationException($"{executor.Where(a)}: every slot of model chunk {chunk} is in use");
            inUse[index] = true;
            int slot = chunk * _s.MicroBatches + index;
            if (_pendingSends.Remove(slot, out var sends))
                foreach (var (handle, action) in sends) Wait(handle, action);
            _slotOf[(a.VirtualStage, a.MicroBatch)] = slot;
            _peakPerChunk[chunk] = Math.Max(_peakPerChunk[chunk], inUse.Count(u => u));
            _peak = Math.Max(_peak, ++_slotsInUse);
            return slot;
        }

        private void Free(PipelineAction a)
        {
            var key = (a.VirtualStage, a.MicroBatch);
            int slot = _slotOf[key];
            _slotOf.Remove(key);
            if (!_s.IsTraining) stage.Release(slot);
            _inUse[slot / _s.MicroBatches][slot % _s.MicroBatches] = false;
            _slotsInUse--;
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
