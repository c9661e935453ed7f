using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>A lookup table: row ids[n] of weight (rows, C) for each n. Token embeddings, and GPT-2's learned positions.</summary>
public class Embedding
{
    private readonly ActivationKey _ids, _output;

    /// <summary>
    /// Declares "<paramref name="name"/>.weight" (rows, dim), decayed, laid out by <paramref name="placement"/> (replicated
    /// by default; <see cref="Parallel.VocabParallelEmbedding"/> shards the rows).
    /// </summary>
    public Embedding(ParameterLayoutBuilder parameters, string name, int rows, int dim, Placement? placement = null)
    {
        Name = name;
        Weight = parameters.Declare(name + ".weight", new Shape(rows, dim), weightDecay: true, placement);
        _ids = new ActivationKey(name + ".ids");
        _output = new ActivationKey(name + ".out");
    }

    /// <summary>The key under which a training forward saves its ids for the backward pass.</summary>
    protected ActivationKey IdsKey => _ids;

    /// <summary>The key of the pooled output buffer.</summary>
    protected ActivationKey OutputKey => _output;

    /// <summary>Name prefix of the parameter and activations.</summary>
    public string Name { get; }

    /// <summary>Table (rows, C): this rank's rows.</summary>
    public Parameter Weight { get; }

    /// <summary>Rows of the table.</summary>
    public int Rows => Weight.Shape[0];

    /// <summary>Width C of a row.</summary>
    public int Dim => Weight.Shape[1];

    /// <summary>A pooled (N, C) buffer filled with the rows of ids (N) I32; saves ids (the caller keeps them unchanged until backward).</summary>
    public virtual Tensor Forward(in PassContext ctx, Tensor ids)
    {
        var y = ctx.Buffer(_output, new Shape(ids.Size(0), Dim), Weight.ComputeDType);
        Forward(ctx, ids, y, accumulate: false);
        return y;
    }

    /// <summary>output (N, C) = (or +=, when <paramref name="accumulate"/>) the rows of ids (N) I32; saves ids.</summary>
    public virtual void Forward(in PassContext ctx, Tensor ids, Tensor output, bool accumulate)
    {
        if (ids.Rank != 1 || ids.DType != DType.I32)
            throw new ArgumentException($"{Name}: ids must be (N) I32, got {ids.Shape} {ids.DType}");
        if (output.Rank != 2 || output.Size(0) != ids.Size(0) || output.Size(1) != Dim)
            throw new ArgumentException($"{Name}: output {output.Shape} must be ({ids.Size(0)}, {Dim})");
        if (Weight.Quantized is { } q) ids.Backend.QuantizedEmbeddingForward(ids, q, output, accumulate);
        else ids.Backend.EmbeddingForward(ids, Weight.Value, output, accumulate);
        ctx.Save(_ids, ids);
    }

    /// <summary>weight.Grad += scatter of dy (N, C) by the saved ids.</summary>
    public virtual void Backward(in PassContext ctx, Tensor dy)
    {
        if (Weight.RequiresGradient) dy.Backend.EmbeddingBackward(ctx.Get(_ids), dy, Weight.Grad);   // nothing for a frozen table
    }

    /// <summary>
    /// <see cref="Backward(in PassContext, Tensor)"/> for ids that were i % <paramref name="period"/> for i in [0, N), N a
    /// multiple of the period (GPT-2's learned positions in training): weight.Grad rows [0, period) += the sum of dy's N / period
    /// blocks of rows, one column sum over the blocks (<see cref="IBackend.SumRows"/>) instead of a scatter whose every
    /// address takes N / period atomic adds (64 at gpt2-124m's 64 x 1024).
    /// </summary>
    public virtual void BackwardPeriodic(in PassContext ctx, Tensor dy, int period)
    {
        if (period < 1 || period > Rows || dy.Rank != 2 || dy.Size(1) != Dim || dy.Size(0) % period != 0 || !dy.IsContiguous)
            throw new ArgumentException($"{Name}: dy {dy.Shape} must be contiguous (a multiple of {period}, {Dim}) rows of positions 0 to {period - 1} of {Rows}");
        if (!Weight.RequiresGradient) return;                       // nothing for a frozen table
        var grad = Weight.Grad.Slice(0, 0, period);                  // (period, C), contiguous
        dy.Backend.SumRows(dy.Reshape(dy.Size(0) / period, period * Dim), grad.Reshape(period * Dim));
    }
}
