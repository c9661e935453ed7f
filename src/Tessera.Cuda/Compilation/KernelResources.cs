namespace Tessera.Cuda.Compilation;

/// <summary>
/// What the compiler gave one kernel (<see cref="CudaModule.Resources"/>): registers per thread, local memory per thread
/// (register spills and locally indexed arrays), static shared memory per CTA, and how many of its CTAs fit on one SM at a
/// given CTA size and dynamic shared memory (the occupancy calculator's answer).
/// </summary>
public readonly record struct KernelResources(int Registers, int LocalBytes, int StaticSharedBytes, int CtasPerSm);
