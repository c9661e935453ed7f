namespace Tessera.Tensors.Cpu;

/// <summary>
/// The host backend: vectorized (Vector512/Vector256 where the CPU has them), multi-threaded,
/// synchronous (every op has finished when it returns). F32 and F64 compute; BF16/F16 as storage.
/// </summary>
public sealed partial class CpuBackend : IBackend
{
    /// <summary>Creates a backend that uses up to <paramref name="threads"/> threads (default: all cores).</summary>
    public CpuBackend(int? threads = null)
    {
        Threads = Math.Max(1, threads ?? Environment.ProcessorCount);
    }

    /// <summary>Number of threads an op may use.</summary>
    public int Threads { get; }

    public Device Device => Device.Cpu;

    public Tensor Allocate(Shape shape, DType dtype) => new(new CpuStorage(this, dtype, shape.NumElements), shape);

    public void Synchronize() { }
}
