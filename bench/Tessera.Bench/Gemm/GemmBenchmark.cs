using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using TesseraGemm = Tessera.Tensors.Cpu.Gemm.Gemm;

namespace Tessera.Bench.Gemm;

/// <summary>
/// `gemm`: GFLOP/s of Tessera's CPU SGEMM (or DGEMM) on GPT-2 124M's training products, next to OpenBLAS.
/// For each linear layer Y (R, N) = X (R, K) W (K, N): the forward product, dX = dY W^T (transposed B)
/// and dW = X^T dY (transposed A), at R = B*T rows.
/// </summary>
internal static unsafe class GemmBenchmark
{
    private sealed record Layer(string Name, int In, int Out);

    private static readonly Layer[] Gpt2Layers =
    [
        new("qkv", 768, 2304),
        new("attn-proj", 768, 768),
        new("fc", 768, 3072),
        new("fc-proj", 3072, 768),
        new("lm-head", 768, 50304),
    ];

    /// <summary>Runs the benchmark with command-line options; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        int[] rows = [256, 1024];
        int threads = 2, reps = 5;
        bool useBlas = true, dgemm = false, cpuTime = false;
        string? only = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--rows": rows = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--threads": threads = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--reps": reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-openblas": useBlas = false; break;
                case "--dgemm": dgemm = true; break;
                case "--cpu-time": cpuTime = true; break;
                case "--only": only = args[++i]; break;
                default:
                    Console.Error.WriteLine($"gemm: unknown option '{args[i]}' (expected --rows, --threads, --reps, --no-openblas, --dgemm, --cpu-time, --only LAYER)");
                    return 2;
            }
        }

        OpenBlas? blas = useBlas ? OpenBlas.TryLoad() : null;
        if (useBlas && blas is null)
            Console.WriteLine("OpenBLAS not found: install it with `apt-get install -y libopenblas0-pthread` (Debian/Ubuntu) to compare; Tessera's numbers follow alone.");
        blas?.SetThreads(threads);

        string cpu = CpuModel();
        Console.WriteLine($"# {(dgemm ? "DGEMM" : "SGEMM")}, threads={threads}, best of {Rounds} rounds x {reps} calls, CPU: {cpu} ({Environment.ProcessorCount} logical)");
        if (cpuTime)
            Console.WriteLine("# --cpu-time: GFLOP per second of process CPU time (all threads summed), a load-insensitive efficiency measure, not wall-clock speed");
        if (blas is not null)
        {
            Console.WriteLine($"# OpenBLAS: {blas.Path} (core: {blas.CoreName})");
            if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported && !blas.CoreName.Contains("Skylake", StringComparison.OrdinalIgnoreCase)
                && !blas.CoreName.Contains("Cooperlake", StringComparison.OrdinalIgnoreCase) && !blas.CoreName.Contains("Sapphire", StringComparison.OrdinalIgnoreCase))
                Console.WriteLine("# note: this CPU has AVX-512 but OpenBLAS chose non-AVX-512 kernels; for its fastest kernels run with OPENBLAS_CORETYPE=SkylakeX");
        }
        Console.WriteLine();
        WarmUp(threads, dgemm);
        Console.WriteLine("| rows | layer | product | M | N | K | Tessera GFLOP/s | OpenBLAS GFLOP/s | Tessera/OpenBLAS |");
        Console.WriteLine("|---:|---|---|---:|---:|---:|---:|---:|---:|");
        double logRatioSum = 0;
        int ratioCount = 0;
        long allocated = 0, calls = 0;
        foreach (int r in rows)
            foreach (Layer layer in Gpt2Layers)
            {
                if (only is not null && layer.Name != only)
                    continue;
                var forms = new (string Name, bool TA, bool TB, int M, int N, int K)[]
                {
                    ("Y = X W", false, false, r, layer.Out, layer.In),
                    ("dX = dY W^T", false, true, r, layer.In, layer.Out),
                    ("dW = X^T dY", true, false, layer.In, layer.Out, r),
                };
                foreach (var f in forms)
                {
                    var (tess, blasG, alloc, n) = dgemm
                        ? Measure<double>(f.TA, f.TB, f.M, f.N, f.K, threads, reps, blas, cpuTime)
                        : Measure<float>(f.TA, f.TB, f.M, f.N, f.K, threads, reps, blas, cpuTime);
                    allocated += alloc;
                    calls += n;
                    string blasCol = blasG > 0 ? blasG.ToString("F1", CultureInfo.InvariantCulture) : "n/a";
                    string ratioCol = "n/a";
                    if (blasG > 0)
                    {
                        double ratio = tess / blasG;
                        logRatioSum += Math.Log(ratio);
                        ratioCount++;
                        ratioCol = ratio.ToString("P0", CultureInfo.InvariantCulture);
                    }
                    Console.WriteLine($"| {r} | {layer.Name} | {f.Name} | {f.M} | {f.N} | {f.K} | {tess.ToString("F1", CultureInfo.InvariantCulture)} | {blasCol} | {ratioCol} |");
                }
            }
        if (ratioCount > 0)
            Console.WriteLine($"\nGeometric mean Tessera/OpenBLAS: {Math.Exp(logRatioSum / ratioCount).ToString("P1", CultureInfo.InvariantCulture)} over {ratioCount} products");
        Console.WriteLine($"Managed bytes allocated per Tessera call on the calling thread (packing buffers are per-thread and reused): {(calls == 0 ? 0 : allocated / calls)}");
        return 0;
    }

    private static (double Tessera, double Blas, long Allocated, long Calls) Measure<T>(bool ta, bool tb, int m, int n, int k,
        int threads, int reps, OpenBlas? blas, bool cpuTime) where T : unmanaged
    {
        long aLen = (long)m * k, bLen = (long)k * n, cLen = (long)m * n;
        T* a = Alloc<T>(aLen), b = Alloc<T>(bLen), c = Alloc<T>(cLen);
        try
        {
            Fill(a, aLen, 1);
            Fill(b, bLen, 2);
            int lda = ta ? m : k, ldb = tb ? k : n;
            double flops = 2.0 * m * n * k;

            void Tess()
            {
                if (typeof(T) == typeof(float))
                    TesseraGemm.Sgemm(ta, tb, m, n, k, 1f, (float*)a, lda, (float*)b, ldb, 0f, (float*)c, n, threads);
                else
                    TesseraGemm.Dgemm(ta, tb, m, n, k, 1.0, (double*)a, lda, (double*)b, ldb, 0.0, (double*)c, n, threads);
            }

            void Blas()
            {
                if (typeof(T) == typeof(float))
                    blas!.Sgemm(ta, tb, m, n, k, 1f, (float*)a, lda, (float*)b, ldb, 0f, (float*)c, n);
                else
                    blas!.Dgemm(ta, tb, m, n, k, 1.0, (double*)a, lda, (double*)b, ldb, 0.0, (double*)c, n);
            }

            // Warm up (JIT tiers, per-thread packing buffers), then time each library in its own block:
            // OpenBLAS's idle workers spin for a while after each call and would take the core that
            // Tessera's second thread needs if the calls alternated. After OpenBLAS, pause until they sleep.
            Tess();
            double tTess = double.MaxValue, tBlas = double.MaxValue;
            long alloc = 0;
            // Several rounds so that each library gets more than one window of background load.
            for (int round = 0; round < Rounds; round++)
            {
                for (int i = 0; i < reps; i++)
                {
                    long before = GC.GetAllocatedBytesForCurrentThread();
                    tTess = Math.Min(tTess, Time(Tess, cpuTime));
                    alloc += GC.GetAllocatedBytesForCurrentThread() - before;
                }
                if (blas is not null)
                {
                    Blas();
                    for (int i = 0; i < reps; i++)
                        tBlas = Math.Min(tBlas, Time(Blas, cpuTime));
                    Thread.Sleep(OpenBlasSpinPause);
                }
            }
            return (flops / tTess / 1e9, blas is null ? 0 : flops / tBlas / 1e9, alloc, (long)reps * Rounds);
        }
        finally
        {
            NativeMemory.AlignedFree(a);
            NativeMemory.AlignedFree(b);
            NativeMemory.AlignedFree(c);
        }
    }

    private const int Rounds = 3;

    // Longer than OpenBLAS's default spin of its idle worker threads before they block.
    private static readonly TimeSpan OpenBlasSpinPause = TimeSpan.FromMilliseconds(300);

    // Starts the thread pool's workers and brings the GEMM code to its final JIT tier before anything is timed.
    private static void WarmUp(int threads, bool dgemm)
    {
        for (int i = 0; i < 20; i++)
        {
            if (dgemm)
                Measure<double>(false, false, 256, 768, 256, threads, 1, null, false);
            else
                Measure<float>(false, false, 256, 768, 256, threads, 1, null, false);
        }
    }

    private static double Time(Action call, bool cpuTime)
    {
        if (cpuTime)
        {
            double c0 = ProcessCpuSeconds();
            call();
            return ProcessCpuSeconds() - c0;
        }
        long t0 = Stopwatch.GetTimestamp();
        call();
        return Stopwatch.GetElapsedTime(t0).TotalSeconds;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out Timespec ts);

    // CLOCK_PROCESS_CPUTIME_ID: nanosecond CPU time of all threads of this process (Linux).
    private static double ProcessCpuSeconds()
        => ClockGetTime(2, out Timespec ts) == 0 ? ts.Seconds + ts.Nanoseconds * 1e-9 : throw new InvalidOperationException("clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed; run without --cpu-time");

    private static T* Alloc<T>(long len) where T : unmanaged
        => (T*)NativeMemory.AlignedAlloc((nuint)(len * sizeof(T)), 64);

    private static void Fill<T>(T* p, long len, int seed) where T : unmanaged
    {
        var rng = new Random(seed);
        for (long i = 0; i < len; i++)
        {
            double v = rng.NextDouble() * 2 - 1;
            if (typeof(T) == typeof(float))
                ((float*)p)[i] = (float)v;
            else
                ((double*)p)[i] = v;
        }
    }

    private static string CpuModel()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal))
                    return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }
}
