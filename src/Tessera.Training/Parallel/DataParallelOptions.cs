namespace Tessera.Training.Parallel;

/// <summary>Settings of data-parallel / ZeRO training. Validated by <see cref="Validate"/>.</summary>
public sealed record DataParallelOptions
{
    /// <summary>ZeRO stage; default <see cref="ZeroStage.None"/> (plain data parallelism).</summary>
    public ZeroStage Stage { get; init; } = ZeroStage.None;

    /// <summary>
    /// Minimum elements per gradient bucket (stages 0-2; a bucket is closed at the first parameter boundary
    /// past this size). Default 2^22 (16 MiB of F32), rounded to whole parameters.
    /// </summary>
    public long BucketElements { get; init; } = 1L << 22;

    /// <summary>
    /// ZeRO-Offload: keep the rank's fp32 master shard and its AdamW moments in host memory and run the
    /// update there with the CPU backend. Default false.
    /// </summary>
    public bool OffloadOptimizer { get; init; }

    /// <summary>
    /// ZeRO-Offload: largest number of elements one device-host copy of the offloaded update moves (the pipelining
    /// granularity: the host updates one piece while the next one's gradient is copied off the device). Default
    /// <see cref="OffloadedAdamW.DefaultPieceElements"/> (2^22); at most <see cref="OffloadedAdamW.MaxPieceElements"/>.
    /// </summary>
    public long OffloadPieceElements { get; init; } = OffloadedAdamW.DefaultPieceElements;

    /// <summary>
    /// ZeRO-3 check: fill a released segment's gathered buffer with NaN before it returns to the pool, so a tensor
    /// kept from a parameter's <c>Value</c> past its release (reading the property itself throws) poisons the loss.
    /// Costs one fill per release; default false.
    /// </summary>
    public bool PoisonReleasedParameters { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public DataParallelOptions Validate()
    {
        if (!Enum.IsDefined(Stage)) throw new ArgumentException($"parallel options: Stage ({(int)Stage}) must be 0, 1, 2 or 3");
        if (BucketElements <= 0) throw new ArgumentException($"parallel options: BucketElements ({BucketElements}) must be positive");
        if (OffloadPieceElements < 1 || OffloadPieceElements > OffloadedAdamW.MaxPieceElements)
            throw new ArgumentException($"parallel options: OffloadPieceElements ({OffloadPieceElements}) must be in [1, {OffloadedAdamW.MaxPieceElements}]");
        return this;
    }
}
