namespace Tessera.Inference.Serving;

/// <summary>
/// Which LoRA adapter each slot of a served model holds (<see cref="Nn.Adapters.MultiLoraBatch"/>), by name, as requests, loads and
/// unloads see it. A slot is free, loading (reserved by a load whose weights are not yet written), serving, or draining (unloaded:
/// its name gone, its running requests finishing before the slot frees). Every load gets a new number (<see cref="Load"/>) that seeds
/// its requests' prefix-cache chains. Guarded by its own lock: requests are resolved and queued, and loads and unloads queued, under
/// it (<see cref="Gate"/>), so the engine's loop sees them in the order they happened.
/// </summary>
internal sealed class LoraSlotTable
{
    private readonly string?[] _names;            // serving or loading: the name; null: free or draining
    private readonly SlotState[] _states;
    private readonly long[] _loads;
    private long _lastLoad;

    internal enum SlotState { Free, Loading, Serving, Draining }

    public LoraSlotTable(int slots, IReadOnlyList<string> startup)
    {
        _names = new string?[slots];
        _states = new SlotState[slots];
        _loads = new long[slots];
        for (int i = 0; i < startup.Count; i++) { _names[i] = startup[i]; _states[i] = SlotState.Serving; _loads[i] = ++_lastLoad; }
    }

    /// <summary>The lock that orders resolutions, loads and unloads with the engine's command queue.</summary>
    public object Gate { get; } = new();

    /// <summary>How many slots there are.</summary>
    public int Slots => _names.Length;

    /// <summary>The names served now, in slot order.</summary>
    public IReadOnlyList<string> Names
    {
        get { lock (Gate) return Enumerable.Range(0, _names.Length).Where(i => _states[i] == SlotState.Serving).Select(i => _names[i]!).ToArray(); }
    }

    /// <summary>The slot serving <paramref name="name"/>, or -1 (call under <see cref="Gate"/>).</summary>
    public int SlotOf(string name)
    {
        for (int i = 0; i < _names.Length; i++) if (_states[i] == SlotState.Serving && _names[i] == name) return i;
        return -1;
    }

    /// <summary>Whether slot <paramref name="slot"/> serves an adapter now (call under <see cref="Gate"/>).</summary>
    public bool IsServing(int slot) => slot >= 0 && slot < _names.Length && _states[slot] == SlotState.Serving;

    /// <summary>The load number of slot <paramref name="slot"/>'s adapter (call under <see cref="Gate"/>).</summary>
    public long Load(int slot) => _loads[slot];

    /// <summary>Reserves a free slot for <paramref name="name"/> (call under <see cref="Gate"/>); throws when the name is taken or no slot is free.</summary>
    public (int Slot, long Load) Reserve(string name)
    {
        for (int i = 0; i < _names.Length; i++)
            if (_names[i] == name && _states[i] is SlotState.Serving or SlotState.Loading)
                throw new LoraAdapterException(LoraAdapterError.Conflict, $"the LoRA adapter '{name}' is {(_states[i] == SlotState.Serving ? "served" : "being loaded")} already; unload it first to load other weights under that name");
        int free = Array.IndexOf(_states, SlotState.Free);
        if (free < 0)
        {
            int draining = _states.Count(s => s == SlotState.Draining);
            throw new LoraAdapterException(LoraAdapterError.Conflict, $"every one of the {_names.Length} LoRA slots is taken ({string.Join(", ", Names)}" +
                $"{(draining > 0 ? $"; {draining} unloaded, finishing their requests" : "")}); unload an adapter first, or serve with a larger --max-loras");
        }
        _names[free] = name;
        _states[free] = SlotState.Loading;
        _loads[free] = ++_lastLoad;
        return (free, _loads[free]);
    }

    /// <summary>A reserved slot's adapter is written: its name serves from now on.</summary>
    public void Loaded(int slot) { lock (Gate) _states[slot] = SlotState.Serving; }

    /// <summary>Stops serving <paramref name="name"/> (call under <see cref="Gate"/>); returns its slot, draining until <see cref="Free"/>.</summary>
    public int Unload(string name)
    {
        int slot = SlotOf(name);
        if (slot < 0)
            throw new LoraAdapterException(LoraAdapterError.NotFound, $"no LoRA adapter named '{name}' is served{(Names.Count > 0 ? $" (served: {string.Join(", ", Names)})" : "")}");
        _names[slot] = null;
        _states[slot] = SlotState.Draining;
        return slot;
    }

    /// <summary>Slot <paramref name="slot"/> is empty again (a failed load, or an unloaded adapter whose requests have finished).</summary>
    public void Free(int slot)
    {
        lock (Gate)
        {
            _names[slot] = null;
            _states[slot] = SlotState.Free;
        }
    }
}
