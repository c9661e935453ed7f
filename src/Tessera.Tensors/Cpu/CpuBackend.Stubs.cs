namespace Tessera.Tensors.Cpu;

// Placeholder bodies, replaced op family by op family.
public sealed partial class CpuBackend
{
    public void CopyFromHost<T>(ReadOnlySpan<T> source, Tensor destination) where T : unmanaged => throw new NotImplementedException();
    public void CopyToHost<T>(Tensor source, Span<T> destination) where T : unmanaged => throw new NotImplementedException();
    public void Copy(Tensor source, Tensor destination) => throw new NotImplementedException();
    public void Fill(Tensor tensor, double value) => throw new NotImplementedException();
    public void MatMul(Tensor a, Tensor b, Tensor c, bool transposeA = false, bool transposeB = false, double alpha = 1, double beta = 0, Tensor? bias = null) => throw new NotImplementedException();
    public void SumRows(Tensor x, Tensor sums) => throw new NotImplementedException();
    public void Add(Tensor a, Tensor b, Tensor output) => throw new NotImplementedException();
    public void Accumulate(Tensor accumulator, Tensor x, double alpha = 1) => throw new NotImplementedException();
    public void Scale(Tensor x, double factor) => throw new NotImplementedException();
    public void GeluForward(Tensor x, Tensor output) => throw new NotImplementedException();
    public void GeluBackward(Tensor x, Tensor dOutput, Tensor dx) => throw new NotImplementedException();
    public void SwiGluForward(Tensor gate, Tensor up, Tensor output) => throw new NotImplementedException();
    public void SwiGluBackward(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp) => throw new NotImplementedException();
    public void Softmax(Tensor x, Tensor output) => throw new NotImplementedException();
    public void EmbeddingForward(Tensor ids, Tensor table, Tensor output, bool accumulate = false) => throw new NotImplementedException();
    public void EmbeddingBackward(Tensor ids, Tensor dOutput, Tensor dTable) => throw new NotImplementedException();
    public void LayerNormForward(Tensor x, Tensor weight, Tensor? bias, Tensor output, Tensor mean, Tensor rstd, double epsilon) => throw new NotImplementedException();
    public void LayerNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd, Tensor dx, Tensor dWeight, Tensor? dBias) => throw new NotImplementedException();
    public void RmsNormForward(Tensor x, Tensor weight, Tensor output, Tensor rstd, double epsilon) => throw new NotImplementedException();
    public void RmsNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight) => throw new NotImplementedException();
    public void Rope(Tensor x, int startPosition, double theta, bool inverse = false) => throw new NotImplementedException();
    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor? logSumExp, double scale) => throw new NotImplementedException();
    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor dOutput, Tensor logSumExp, Tensor dq, Tensor dk, Tensor dv, double scale) => throw new NotImplementedException();
    public void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor? dLogits, double lossScale) => throw new NotImplementedException();
    public void Sum(Tensor x, Tensor result, double scale = 1, bool accumulate = false) => throw new NotImplementedException();
    public void SumOfSquares(Tensor x, Tensor result) => throw new NotImplementedException();
    public void AdamW(Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step, Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null) => throw new NotImplementedException();
}
