namespace Tessera.Tensors;

/// <summary>The argument checks of <see cref="IBackend.FeedForwardSwiGlu"/>, shared by the backends.</summary>
public static class FeedForwardShapes
{
    /// <summary>
    /// Throws <see cref="ArgumentException"/>, naming <paramref name="where"/> and every shape, unless x (N, C), gate and up
    /// (F, C), down (C, F), hidden (N, F) and residual (N, C) fit, the biases hold F, F and C elements, and x, hidden and
    /// residual share one dtype.
    /// </summary>
    public static void Validate(string where, Tensor x, Tensor gateWeight, Tensor upWeight, Tensor downWeight, Tensor hidden,
        Tensor residual, Tensor? gateBias, Tensor? upBias, Tensor? downBias)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(gateWeight); ArgumentNullException.ThrowIfNull(upWeight);
        ArgumentNullException.ThrowIfNull(downWeight); ArgumentNullException.ThrowIfNull(hidden); ArgumentNullException.ThrowIfNull(residual);
        bool fits = x.Rank == 2 && gateWeight.Rank == 2 && upWeight.Shape == gateWeight.Shape && downWeight.Rank == 2
            && hidden.Rank == 2 && residual.Rank == 2;
        if (fits)
        {
            int n = x.Size(0), c = x.Size(1), f = gateWeight.Size(0);
            fits = gateWeight.Size(1) == c && downWeight.Size(0) == c && downWeight.Size(1) == f && hidden.Size(0) == n
                && hidden.Size(1) == f && residual.Size(0) == n && residual.Size(1) == c
                && (gateBias is null || gateBias.NumElements == f) && (upBias is null || upBias.NumElements == f)
                && (downBias is null || downBias.NumElements == c);
        }
        if (!fits)
            throw new ArgumentException($"{where}: x {x.Shape}, gate {gateWeight.Shape}, up {upWeight.Shape}, down {downWeight.Shape}, "
                + $"hidden {hidden.Shape}, residual {residual.Shape}, biases {gateBias?.Shape.ToString() ?? "none"}, "
                + $"{upBias?.Shape.ToString() ?? "none"}, {downBias?.Shape.ToString() ?? "none"} do not fit (N, C), (F, C), (F, C), (C, F), "
                + "(N, F), (N, C) and biases of F, F and C");
        if (hidden.DType != x.DType || residual.DType != x.DType)
            throw new ArgumentException($"{where}: x is {x.DType}, hidden {hidden.DType}, residual {residual.DType}: they must share one dtype");
    }
}
