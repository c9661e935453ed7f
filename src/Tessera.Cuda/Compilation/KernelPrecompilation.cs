namespace Tessera.Cuda.Compilation;

/// <summary>
/// What <see cref="KernelLibrary.Precompile"/> did with one module: <paramref name="Compiled"/> it (false: it was in the cache
/// already, or it failed), in <paramref name="Elapsed"/>; <paramref name="Error"/> is NVRTC's message when it does not compile.
/// </summary>
public sealed record KernelPrecompilation(string Module, bool Compiled, TimeSpan Elapsed, string? Error);
