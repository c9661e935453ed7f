using Xunit;

namespace Tessera.Tests.Server;

/// <summary>The managed heap is measured for the whole process: tests that measure it run alone, or other tests' allocations
/// and caches would count as their growth (<see cref="LoadTests"/> failed once so, 9.4 MB over a round, beside the parallel
/// suite).</summary>
[CollectionDefinition("heap", DisableParallelization = true)]
public sealed class HeapCollection;
