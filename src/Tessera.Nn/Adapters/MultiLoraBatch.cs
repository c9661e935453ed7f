using Tessera.Tensors;

namespace Tessera.Nn.Adapters;

/// <summary>
/// The LoRA adapters a model serves unmerged over one base (multi-LoRA, as vLLM's --lora-modules, S-LoRA or Punica serve them),
/// and which adapter each row of the current step uses. The serving loop sets a step's rows (<see cref="SetRows"/>) before its
/// forward pass; every <see cref="MultiLoraLinear"/> of the model reads them, so that one continuous batch mixes requests for the
/// base and for any adapter. The adapters live in <see cref="Slots"/> slots of rank up to <see cref="MaxRank"/>, allocated once
/// (<see cref="Allocate"/>): an adapter is written into a free slot and emptied from it (<see cref="Detach"/>) between steps, as
/// vLLM's --max-loras and --max-lora-rank size its slots. With no adapter in any row, the model is the base and its layers are
/// plain products.
/// </summary>
public sealed class MultiLoraBatch
{
    private readonly List<MultiLoraLinear> _layers = [];
    private readonly Dictionary<string, Tensor> _masks = new(StringComparer.Ordinal);   // per stack signature: (capacity, R) buffer
    private readonly HashSet<string> _filled = new(StringComparer.Ordinal);              // signatures whose mask holds this step's rows
    private int[] _adapterOfRow = [];
    private int _rows;
    private int[] _stepAdapterOfRow = [];                                                // the step's rows while a gathered view is open
    private int _stepRows;
    private bool _stepActive;
    private int[] _viewAdapterOfRow = [];
    private bool _inView;
    private const string ViewKey = "view:";                                              // masks of a view, apart from the step's

    /// <summary>
    /// <paramref name="slots"/> adapter slots of rank up to <paramref name="maxRank"/> each (vLLM's --max-loras and --max-lora-rank),
    /// on the layers <paramref name="targets"/> name; <paramref name="names"/> are the adapters attached when the model is built, in
    /// slots 0, 1, ... (the others free until an adapter is loaded into them at run time).
    /// </summary>
    public MultiLoraBatch(IReadOnlyList<string> names, IReadOnlyList<LoraTarget> targets, int slots, int maxRank)
    {
        ArgumentNullException.ThrowIfNull(names);
        ArgumentNullException.ThrowIfNull(targets);
        if (slots < 1) throw new ArgumentException($"multi-LoRA: slots ({slots}) must be at least 1");
        if (maxRank < 1) throw new ArgumentException($"multi-LoRA: maxRank ({maxRank}) must be at least 1");
        if (names.Count > slots) throw new ArgumentException($"multi-LoRA: {names.Count} adapters do not fit {slots} slots");
        if (names.Distinct(StringComparer.Ordinal).Count() != names.Count) throw new ArgumentException($"multi-LoRA: adapter names must differ ({string.Join(", ", names)})");
        if (targets.Count == 0) throw new ArgumentException("multi-LoRA: no target layer given");
        StartupNames = names;
        Targets = targets;
        Slots = slots;
        MaxRank = maxRank;
    }

    /// <summary>The adapters attached when the model was built, in slots 0, 1, ...</summary>
    public IReadOnlyList<string> StartupNames { get; }

    /// <summary>How many adapters the layers hold at once (each a slot of <see cref="MaxRank"/> columns in every stack).</summary>
    public int Slots { get; }

    /// <summary>The largest rank a slot holds; an adapter of smaller rank fills the rest of its slot with zeros.</summary>
    public int MaxRank { get; }

    /// <summary>The layers any adapter targets (the union of the adapters' targets): the layers built as <see cref="MultiLoraLinear"/>.</summary>
    public IReadOnlyList<LoraTarget> Targets { get; }

    /// <summary>The layers that serve the adapters, in declaration order.</summary>
    public IReadOnlyList<MultiLoraLinear> Layers => _layers;

    /// <summary>Whether a row of the current step (or of the open gathered view, <see cref="Gather"/>) uses an adapter: the
    /// adapted layers are then no plain products.</summary>
    public bool Active { get; private set; }

    /// <summary>Rows of the current step, or of the open gathered view (0 when none is set).</summary>
    public int Rows => _rows;

    /// <summary>The layer named <paramref name="name"/>, or null when no adapter targets it.</summary>
    public MultiLoraLinear? Layer(string name) => _layers.FirstOrDefault(l => l.Name == name);

    internal void Add(MultiLoraLinear layer) => _layers.Add(layer);

    /// <summary>
    /// The current step's rows: row i uses adapter <paramref name="adapterOfRow"/>[i], or none (the base) when it is negative.
    /// Padding rows are negative. Stays until the next call or <see cref="Clear"/>.
    /// </summary>
    public void SetRows(ReadOnlySpan<int> adapterOfRow)
    {
        if (_inView) throw new InvalidOperationException("multi-LoRA: the step's rows cannot change while a gathered view of them is open");
        if (_adapterOfRow.Length < adapterOfRow.Length) _adapterOfRow = new int[Math.Max(adapterOfRow.Length, 2 * _adapterOfRow.Length)];
        bool active = false;
        for (int i = 0; i < adapterOfRow.Length; i++)
        {
            int a = adapterOfRow[i];
            if (a >= Slots) throw new ArgumentOutOfRangeException(nameof(adapterOfRow), $"multi-LoRA: row {i} uses slot {a}; there are {Slots}");
            _adapterOfRow[i] = a;
            active |= a >= 0;
        }
        _rows = adapterOfRow.Length;
        Active = active;
        _filled.Clear();
    }

    /// <summary>
    /// Allocates every layer's stacks (zeros: no slot attached) on <paramref name="backend"/> in <paramref name="dtype"/>, once, when
    /// the model is built: loading an adapter later only writes into its slot.
    /// </summary>
    public void Allocate(IBackend backend, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(backend);
        foreach (var layer in _layers) layer.Allocate(backend, dtype);
    }

    /// <summary>Empties slot <paramref name="slot"/> in every layer (its columns zero, its mask entries gone).</summary>
    public void Detach(int slot)
    {
        foreach (var layer in _layers) layer.Detach(slot);
    }

    /// <summary>Drops the cached masks: a slot's rank or scaling changed (a load or an unload between steps).</summary>
    internal void ForgetMasks()
    {
        foreach (var buffer in _masks.Values) buffer.Storage.Dispose();
        _masks.Clear();
        _filled.Clear();
    }

    /// <summary>No adapter in any row: the layers are the base's plain products again (a step of base requests only).</summary>
    public void Clear()
    {
        if (_inView) throw new InvalidOperationException("multi-LoRA: the step's rows cannot be cleared while a gathered view of them is open");
        _rows = 0;
        Active = false;
        _filled.Clear();
    }

    /// <summary>
    /// Makes the rows <paramref name="ids"/> of the current step the rows the layers see until the returned scope is disposed:
    /// row i of the view uses the adapter of step row <paramref name="ids"/>[i]. A mixture of experts opens one around each expert's
    /// products, whose input is the gathered rows of the tokens routed to it, so that every gathered row adds its own adapter;
    /// <see cref="Active"/> then says whether a gathered row uses one (an expert whose rows are all the base's runs its plain, fused
    /// products). The view's masks are cached apart from the step's (which stay filled), rebuilt for each view. Views do not nest;
    /// with no adapter in the step the scope does nothing.
    /// </summary>
    public RowsView Gather(ReadOnlySpan<int> ids)
    {
        if (!Active) return default;
        if (_inView) throw new InvalidOperationException("multi-LoRA: gathered views of the step's rows do not nest");
        if (_viewAdapterOfRow.Length < ids.Length) _viewAdapterOfRow = new int[Math.Max(ids.Length, 2 * _viewAdapterOfRow.Length)];
        bool active = false;
        for (int i = 0; i < ids.Length; i++)
        {
            int id = ids[i];
            if ((uint)id >= (uint)_rows) throw new ArgumentOutOfRangeException(nameof(ids), $"multi-LoRA: gathered row {i} is step row {id}; the step has {_rows}");
            int a = _adapterOfRow[id];
            _viewAdapterOfRow[i] = a;
            active |= a >= 0;
        }
        (_stepAdapterOfRow, _stepRows, _stepActive) = (_adapterOfRow, _rows, Active);
        (_adapterOfRow, _rows, Active) = (_viewAdapterOfRow, ids.Length, active);
        _inView = true;
        _filled.RemoveWhere(k => k.StartsWith(ViewKey, StringComparison.Ordinal));
        return new RowsView(this);
    }

    private void EndView()
    {
        if (!_inView) return;
        (_viewAdapterOfRow, _adapterOfRow, _rows, Active) = (_adapterOfRow, _stepAdapterOfRow, _stepRows, _stepActive);
        _inView = false;
        _filled.RemoveWhere(k => k.StartsWith(ViewKey, StringComparison.Ordinal));
    }

    /// <summary>The scope of a gathered view of the step's rows (<see cref="Gather"/>): disposing it restores the step's rows.</summary>
    public readonly struct RowsView : IDisposable
    {
        private readonly MultiLoraBatch? _batch;

        internal RowsView(MultiLoraBatch batch) => _batch = batch;

        /// <inheritdoc/>
        public void Dispose() => _batch?.EndView();
    }

    /// <summary>Whether a row of the current step uses adapter <paramref name="adapter"/>.</summary>
    public bool Uses(int adapter)
    {
        for (int i = 0; i < _rows; i++) if (_adapterOfRow[i] == adapter) return true;
        return false;
    }

    /// <summary>
    /// The (N, R) mask of a layer part's stacked adapters (<paramref name="stack"/>: each adapter's index, first column and rank
    /// in the stack) for the current step's N rows: row i holds the scaling alpha/r of its adapter in that adapter's columns and 0
    /// elsewhere, so (x A_stack^T ⊙ mask) B_stack^T adds each row's own adapter only. Layers whose stacks are alike share one
    /// mask, filled once a step; the buffers are kept between steps.
    /// </summary>
    internal Tensor Mask(IBackend backend, DType dtype, IReadOnlyList<(int Adapter, int Column, int Rank, double Scaling)> stack, int columns, string signature)
    {
        int n = _rows;
        if (_inView) signature = ViewKey + signature;
        if (!_masks.TryGetValue(signature, out var buffer) || buffer.Size(0) < n || buffer.DType != dtype)
        {
            buffer?.Storage.Dispose();
            buffer = backend.Allocate(new Shape(Math.Max(n, buffer?.Size(0) * 2 ?? 0), columns), dtype);
            _masks[signature] = buffer;
            _filled.Remove(signature);
        }
        var mask = buffer.Slice(0, 0, n);
        if (_filled.Add(signature))
        {
            var host = new double[n * columns];
            for (int i = 0; i < n; i++)
                foreach (var (adapter, column, rank, scaling) in stack)
                    if (_adapterOfRow[i] == adapter) host.AsSpan(i * columns + column, rank).Fill(scaling);
            MultiLoraLinear.CopyFromHost(backend, host, mask);
        }
        return mask;
    }
}
