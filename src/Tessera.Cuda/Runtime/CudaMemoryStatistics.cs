namespace Tessera.Cuda.Runtime;

/// <summary>What a <see cref="CudaAllocator"/> has handed out.</summary>
/// <param name="BytesInUse">Bytes in live allocations now.</param>
/// <param name="PeakBytesInUse">Largest <paramref name="BytesInUse"/> seen since creation or the last reset.</param>
/// <param name="Allocations">Live allocations now.</param>
/// <param name="TotalAllocations">Allocations made since creation.</param>
public readonly record struct CudaMemoryStatistics(long BytesInUse, long PeakBytesInUse, int Allocations, long TotalAllocations);
