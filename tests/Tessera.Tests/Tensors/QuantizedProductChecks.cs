using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU backend's <see cref="IBackend.QuantizedMatMul"/> over a weight that stands for <c>w</c> (N, K), against a naive
/// double loop over <c>w</c>: y = x W^T, + bias, y += x W^T + bias (beta 1), + addend, and the GELU epilogue with its
/// pre-activation, each within <c>tol</c>. Shared by the int8 and int4 product tests (each states its tolerance).
/// </summary>
internal static class QuantizedProductChecks
{
    public static double Gelu(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

    /// <summary>Draws x (M, K), a bias (N), y (M, N) and an addend (M, N) from <paramref name="rng"/> in that order, then checks.</summary>
    public static void AgainstANaiveLoop(CpuBackend cpu, QuantizedWeight weight, double[] w, DType dtype, int m, int k, int n, double tol, Random rng)
    {
        var xv = TestTensors.Normal(rng, (long)m * k);
        var bv = TestTensors.Normal(rng, n);
        var yv = TestTensors.Normal(rng, (long)m * n);
        var av = TestTensors.Normal(rng, (long)m * n);
        var x = TestTensors.FromDoubles(cpu, xv, dtype, m, k);
        var bias = TestTensors.FromDoubles(cpu, bv, dtype, n);
        double[] Reference(Func<int, int, double, double> finish)
        {
            var r = new double[m * n];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double acc = 0;
                    for (int c = 0; c < k; c++) acc += xv[i * k + c] * w[j * k + c];
                    r[i * n + j] = finish(i, j, acc);
                }
            return r;
        }

        var y = cpu.Allocate(new Shape(m, n), dtype);
        cpu.QuantizedMatMul(x, weight, y);
        NumericAssert.Close(Reference((_, _, acc) => acc), TestTensors.ToDoubles(cpu, y), tol, "x W^T");

        cpu.QuantizedMatMul(x, weight, y, bias: bias);
        NumericAssert.Close(Reference((_, j, acc) => acc + bv[j]), TestTensors.ToDoubles(cpu, y), tol, "x W^T + b");

        TestTensors.Write(cpu, y, yv);
        cpu.QuantizedMatMul(x, weight, y, beta: 1.0, bias: bias);
        NumericAssert.Close(Reference((i, j, acc) => acc + bv[j] + yv[i * n + j]), TestTensors.ToDoubles(cpu, y), tol, "y += x W^T + b");

        cpu.QuantizedMatMul(x, weight, y, addend: TestTensors.FromDoubles(cpu, av, dtype, m, n));
        NumericAssert.Close(Reference((i, j, acc) => acc + av[i * n + j]), TestTensors.ToDoubles(cpu, y), tol, "x W^T + addend");

        var pre = cpu.Allocate(new Shape(m, n), dtype);
        cpu.QuantizedMatMul(x, weight, y, bias: bias, epilogue: MatMulEpilogue.Gelu, auxiliary: pre);
        NumericAssert.Close(Reference((_, j, acc) => acc + bv[j]), TestTensors.ToDoubles(cpu, pre), tol, "GELU's pre-activation");
        NumericAssert.Close(Reference((_, j, acc) => Gelu(acc + bv[j])), TestTensors.ToDoubles(cpu, y), tol, "GELU(x W^T + b)");
    }
}
