using System.Text;
using Tessera.Distributed;
using Tessera.Models.Adapters;
using Tessera.Tensors;

namespace Tessera.Inference.Paging;

/// <summary>
/// Served LoRA adapters under tensor parallelism: every rank holds its share of each slot (<see cref="Nn.Adapters.MultiLoraLinear"/>),
/// so the ranks must mask the same rows each step and fill or empty a slot between the same two steps. Rank 0 announces both on
/// the group its steps are announced on: a step's adapter per row after its metadata, and a load or an unload as a header of its
/// own, in the order its engine loop runs them among the steps.
/// </summary>
public sealed partial class PagedModelRunner
{
    /// <summary>Rank 0: broadcasts the step's adapter per row (<c>_adapterOfRow</c>, as <see cref="SetAdapterRows"/> wrote it).</summary>
    private void AnnounceAdapterRows(int rows)
    {
        var device = _adapterRows!.Slice(0, 0, rows);
        _backend.CopyFromHost<int>(_adapterOfRow.AsSpan(0, rows), device);
        _group!.Broadcast(device, 0).WaitOnDevice();
    }

    /// <summary>Another rank: receives the step's adapter per row and sets it on this rank's served adapters.</summary>
    private void FollowAdapterRows(int rows)
    {
        var device = _adapterRows!.Slice(0, 0, rows);
        _group!.Broadcast(device, 0).WaitOnDevice();
        _backend.CopyToHost<int>(device, _adapterOfRow.AsSpan(0, rows));
        _served!.SetRows(_adapterOfRow.AsSpan(0, rows));
    }

    /// <summary>
    /// Tensor parallelism, rank 0, between steps: announces that the adapter in <paramref name="directory"/> goes into slot
    /// <paramref name="slot"/>; every other rank reads it from that directory and writes its share into the slot (in
    /// <see cref="FollowStep"/>), while rank 0 writes its own. Call <see cref="AgreeOnAdapterLoad"/> next. Nothing on one device.
    /// </summary>
    public void AnnounceAdapterLoad(int slot, string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!HasFollowers) return;
        var bytes = Encoding.UTF8.GetBytes(directory);
        var header = new int[HeaderLength];
        header[0] = LoadAdapterHeader;
        header[1] = slot;
        header[2] = bytes.Length;
        SendHeader(header);
        var path = _backend.Allocate(new Shape(Math.Max(bytes.Length, 1)), DType.I32);
        try
        {
            _backend.CopyFromHost<int>(Array.ConvertAll(bytes.Length == 0 ? [(byte)0] : bytes, b => (int)b), path);
            _group!.Broadcast(path, 0).WaitOnDevice();
        }
        finally
        {
            path.Storage.Dispose();
        }
    }

    /// <summary>
    /// Tensor parallelism, rank 0, after <see cref="AnnounceAdapterLoad"/> and its own write (<paramref name="loadedHere"/>: whether
    /// it succeeded): the ranks agree whether every one holds its share. Returns -1 when all do, else the lowest failing rank;
    /// the other ranks have emptied the slot again then (rank 0 empties its own). -1 on one device.
    /// </summary>
    public int AgreeOnAdapterLoad(bool loadedHere) => HasFollowers ? FailedRank(loadedHere) : -1;

    /// <summary>Tensor parallelism, rank 0, between steps: every other rank empties slot <paramref name="slot"/> (rank 0 empties its own).</summary>
    public void AnnounceAdapterUnload(int slot)
    {
        if (!HasFollowers) return;
        var header = new int[HeaderLength];
        header[0] = UnloadAdapterHeader;
        header[1] = slot;
        SendHeader(header);
    }

    /// <summary>Another rank: reads the announced adapter, writes its share into the slot, and agrees with the others.</summary>
    private void FollowAdapterLoad(int slot, int pathLength)
    {
        var path = _backend.Allocate(new Shape(Math.Max(pathLength, 1)), DType.I32);
        var values = new int[path.Size(0)];
        try
        {
            _group!.Broadcast(path, 0).WaitOnDevice();
            _backend.CopyToHost<int>(path, values);
        }
        finally
        {
            path.Storage.Dispose();
        }
        string directory = Encoding.UTF8.GetString(Array.ConvertAll(values, v => (byte)v), 0, pathLength);
        bool loaded;
        try
        {
            ServedLoraAdapters.Attach(_served!, slot, $"slot {slot}", LoraWeightMerge.Open(directory, _model.Config));
            loaded = true;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or NotSupportedException or UnauthorizedAccessException or InvalidOperationException)
        {
            loaded = false;                                           // rank 0 reports it; this rank stays in step
        }
        if (FailedRank(loaded) >= 0) _served!.Detach(slot);
    }

    /// <summary>The lowest rank of the group that did not load (a max over ranks of size - rank), or -1 when every rank did.</summary>
    private int FailedRank(bool loadedHere)
    {
        var flag = _backend.Allocate(new Shape(1), DType.F32);
        try
        {
            int size = _group!.Size;
            _backend.CopyFromHost<float>([loadedHere ? 0f : size - _group.Rank], flag);
            _group.AllReduce(flag, ReduceOp.Max).WaitOnDevice();
            var host = new float[1];
            _backend.CopyToHost<float>(flag, host);
            return host[0] == 0 ? -1 : size - (int)host[0];
        }
        finally
        {
            flag.Storage.Dispose();
        }
    }
}
