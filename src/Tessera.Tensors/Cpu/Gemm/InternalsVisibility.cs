using System.Runtime.CompilerServices;

// The GEMM kernels are internal to the backend; its tests and the benchmark call them directly.
[assembly: InternalsVisibleTo("Tessera.Tests")]
[assembly: InternalsVisibleTo("Tessera.Bench")]
