namespace Tessera.Tensors;

/// <summary>
/// The shape and dtype checks of the device-routed mixture-of-experts ops (<see cref="IBackend.MoeRoute"/> and its family),
/// shared by every backend so that bad input gets the same message everywhere.
/// </summary>
public static class MoeOpShapes
{
    /// <summary>Checks <see cref="IBackend.MoeRoute"/>'s operands; returns rows N, experts E and k.</summary>
    public static (int Rows, int Experts, int K) Route(string backend, Tensor logits, Tensor expertIds, Tensor weights)
    {
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(expertIds); ArgumentNullException.ThrowIfNull(weights);
        string op = $"{backend}.{nameof(IBackend.MoeRoute)}";
        if (logits.Rank != 2 || !logits.IsContiguous) throw new ArgumentException($"{op}: logits {logits.Shape} must be contiguous (N, E)");
        int n = logits.Size(0), e = logits.Size(1);
        if (expertIds.Rank != 2 || expertIds.Size(0) != n || expertIds.DType != DType.I32 || !expertIds.IsContiguous)
            throw new ArgumentException($"{op}: expertIds {expertIds.Shape} {expertIds.DType} must be contiguous ({n}, k) I32, a row per row of logits {logits.Shape}");
        int k = expertIds.Size(1);
        if (k < 1 || k > e) throw new ArgumentException($"{op}: k ({k}, expertIds' columns) must lie in [1, E = {e}]");
        if (weights.Rank != 2 || weights.Size(0) != n || weights.Size(1) != k || weights.DType is not (DType.F32 or DType.F64) || !weights.IsContiguous)
            throw new ArgumentException($"{op}: weights {weights.Shape} {weights.DType} must be contiguous ({n}, {k}) F32 or F64");
        return (n, e, k);
    }

    /// <summary>Checks <see cref="IBackend.MoeAlign"/>'s operands; returns rows N, experts E and k.</summary>
    public static (int Rows, int Experts, int K) Align(string backend, Tensor expertIds, Tensor offsets, Tensor slots)
    {
        ArgumentNullException.ThrowIfNull(expertIds); ArgumentNullException.ThrowIfNull(offsets); ArgumentNullException.ThrowIfNull(slots);
        string op = $"{backend}.{nameof(IBackend.MoeAlign)}";
        if (expertIds.Rank != 2 || expertIds.DType != DType.I32 || !expertIds.IsContiguous)
            throw new ArgumentException($"{op}: expertIds {expertIds.Shape} {expertIds.DType} must be contiguous (N, k) I32");
        int n = expertIds.Size(0), k = expertIds.Size(1);
        int e = Slots(op, offsets, slots, n, k);
        return (n, e, k);
    }

    /// <summary>Checks offsets (E + 1) I32 and slots (N k) I32; returns E.</summary>
    private static int Slots(string op, Tensor offsets, Tensor slots, int n, int k)
    {
        if (offsets.Rank != 1 || offsets.Size(0) < 2 || offsets.DType != DType.I32 || !offsets.IsContiguous)
            throw new ArgumentException($"{op}: offsets {offsets.Shape} {offsets.DType} must be contiguous (E + 1) I32 with E at least 1");
        if (slots.Rank != 1 || slots.Size(0) != (long)n * k || slots.DType != DType.I32 || !slots.IsContiguous)
            throw new ArgumentException($"{op}: slots {slots.Shape} {slots.DType} must be contiguous ({(long)n * k}) I32, N k = {n} x {k}");
        return offsets.Size(0) - 1;
    }

    /// <summary>Checks <see cref="IBackend.MoeExpertSwiGlu"/>'s operands; returns rows N and k.</summary>
    public static (int Rows, int K) ExpertSwiGlu(string backend, Tensor x, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor hidden)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(experts); ArgumentNullException.ThrowIfNull(hidden);
        string op = $"{backend}.{nameof(IBackend.MoeExpertSwiGlu)}";
        if (x.Rank != 2 || x.Size(1) != experts.Channels || !experts.TakesRows(x.DType) || !x.IsContiguous)
            throw new ArgumentException($"{op}: x {x.Shape} {x.DType} must be contiguous (N, {experts.Channels}) {experts.RowsDescription}, the experts' channels and dtype");
        int n = x.Size(0);
        if (slots is null || n == 0 && slots.NumElements != 0 || n > 0 && slots.NumElements % n != 0)
            throw new ArgumentException($"{op}: slots {slots?.Shape} must hold N k slots for x's {n} rows");
        int k = n == 0 ? 1 : (int)(slots.NumElements / n);
        int e = Slots(op, offsets, slots, n, k);
        if (e != experts.Experts) throw new ArgumentException($"{op}: offsets {offsets.Shape} give {e} experts, the weights {experts.Experts}");
        if (hidden.Rank != 2 || hidden.Size(0) != (long)n * k || hidden.Size(1) != experts.Hidden || hidden.DType != x.DType || !hidden.IsContiguous)
            throw new ArgumentException($"{op}: hidden {hidden.Shape} {hidden.DType} must be contiguous ({(long)n * k}, {experts.Hidden}) {x.DType}");
        return (n, k);
    }

    /// <summary>Checks <see cref="IBackend.MoeExpertDown"/>'s operands; returns rows N and k.</summary>
    public static (int Rows, int K) ExpertDown(string backend, Tensor hidden, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor expertOutput)
    {
        ArgumentNullException.ThrowIfNull(hidden); ArgumentNullException.ThrowIfNull(experts); ArgumentNullException.ThrowIfNull(expertOutput);
        string op = $"{backend}.{nameof(IBackend.MoeExpertDown)}";
        if (hidden.Rank != 2 || hidden.Size(1) != experts.Hidden || !experts.TakesRows(hidden.DType) || !hidden.IsContiguous)
            throw new ArgumentException($"{op}: hidden {hidden.Shape} {hidden.DType} must be contiguous (N k, {experts.Hidden}) {experts.RowsDescription}");
        if (expertOutput.Rank != 2 || expertOutput.Size(0) != hidden.Size(0) || expertOutput.Size(1) != experts.Channels
            || expertOutput.DType != hidden.DType || !expertOutput.IsContiguous)
            throw new ArgumentException($"{op}: expertOutput {expertOutput.Shape} {expertOutput.DType} must be contiguous ({hidden.Size(0)}, {experts.Channels}) {hidden.DType}");
        ArgumentNullException.ThrowIfNull(slots);
        int pairs = hidden.Size(0);
        int e = Slots(op, offsets, slots, pairs, 1);
        if (e != experts.Experts) throw new ArgumentException($"{op}: offsets {offsets.Shape} give {e} experts, the weights {experts.Experts}");
        return (pairs, 1);
    }

    /// <summary>Checks <see cref="IBackend.MoeCombine"/>'s operands; returns rows N, k and channels C.</summary>
    public static (int Rows, int K, int Channels) Combine(string backend, Tensor expertOutput, Tensor weights, Tensor output, Tensor? shared, Tensor? sharedGateLogits)
    {
        ArgumentNullException.ThrowIfNull(expertOutput); ArgumentNullException.ThrowIfNull(weights); ArgumentNullException.ThrowIfNull(output);
        string op = $"{backend}.{nameof(IBackend.MoeCombine)}";
        if (output.Rank != 2 || !output.IsContiguous) throw new ArgumentException($"{op}: output {output.Shape} must be contiguous (N, C)");
        int n = output.Size(0), c = output.Size(1);
        if (weights.Rank != 2 || weights.Size(0) != n || weights.DType is not (DType.F32 or DType.F64) || !weights.IsContiguous)
            throw new ArgumentException($"{op}: weights {weights.Shape} {weights.DType} must be contiguous ({n}, k) F32 or F64");
        int k = weights.Size(1);
        if (expertOutput.Rank != 2 || expertOutput.Size(0) != (long)n * k || expertOutput.Size(1) != c || expertOutput.DType != output.DType || !expertOutput.IsContiguous)
            throw new ArgumentException($"{op}: expertOutput {expertOutput.Shape} {expertOutput.DType} must be contiguous ({(long)n * k}, {c}) {output.DType}");
        if ((shared is null) != (sharedGateLogits is null))
            throw new ArgumentException($"{op}: give the shared expert's output and its gate's logits together, or neither");
        if (shared is not null)
        {
            if (!shared.Shape.Equals(output.Shape) || shared.DType != output.DType || !shared.IsContiguous)
                throw new ArgumentException($"{op}: shared {shared.Shape} {shared.DType} must be contiguous ({n}, {c}) {output.DType}");
            if (sharedGateLogits!.NumElements != n || sharedGateLogits.DType != output.DType || !sharedGateLogits.IsContiguous)
                throw new ArgumentException($"{op}: sharedGateLogits {sharedGateLogits.Shape} {sharedGateLogits.DType} must be contiguous ({n}, 1) {output.DType}");
        }
        return (n, k, c);
    }
}
