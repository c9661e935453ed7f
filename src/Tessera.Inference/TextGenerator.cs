using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Inference;

/// <summary>
/// Autoregressive generation with a KV cache: one forward pass over the prompt (prefill), then
/// one token at a time (decode), each step reading only the last row of logits to the host.
/// </summary>
public sealed class TextGenerator
{
    private readonly Transformer _model;

    /// <summary>Generates with <paramref name="model"/>.</summary>
    public TextGenerator(Transformer model) => _model = model;

    /// <summary>Yields new token ids as they are produced.</summary>
    /// <exception cref="ArgumentException">The prompt is empty or does not fit the model's context.</exception>
    public IEnumerable<int> Generate(IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var config = _model.Config;
        if (prompt.Count == 0) throw new ArgumentException("the prompt is empty: give at least one token");
        if (prompt.Count >= config.MaxSequenceLength)
            throw new ArgumentException($"the prompt has {prompt.Count} tokens but the model's context holds {config.MaxSequenceLength}; shorten the prompt to at most {config.MaxSequenceLength - 1} tokens");
        for (int i = 0; i < prompt.Count; i++)
            if ((uint)prompt[i] >= (uint)config.VocabSize)
                throw new ArgumentException($"prompt token {prompt[i]} at position {i} is outside the vocabulary of {config.VocabSize}");
        return Run(prompt, options);
    }

    private IEnumerable<int> Run(IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var backend = _model.Parameters.Backend;
        var config = _model.Config;
        var sampler = new Sampler(options.Sampling);
        var cache = _model.CreateKvCache(batch: 1);
        var row = backend.Allocate(new Shape(config.EffectivePaddedVocab), DType.F32);
        var host = new float[config.EffectivePaddedVocab];
        var stop = options.StopTokens as ISet<int> ?? new HashSet<int>(options.StopTokens);

        var tokens = backend.FromHost<int>(prompt.ToArray(), new Shape(1, prompt.Count));
        var one = backend.Allocate(new Shape(1, 1), DType.I32);
        int length = prompt.Count;
        Tensor logits = _model.ForwardWithCache(tokens, cache);   // (1, T, Vpad)
        for (int produced = 0; produced < options.MaxNewTokens && length < config.MaxSequenceLength; produced++)
        {
            backend.Copy(logits.Select(0, 0).Select(0, logits.Size(1) - 1), row);
            backend.CopyToHost<float>(row, host);
            int next = sampler.Sample(host, config.VocabSize);
            if (stop.Contains(next)) yield break;
            yield return next;
            length++;
            if (length >= config.MaxSequenceLength || produced + 1 >= options.MaxNewTokens) yield break;
            backend.CopyFromHost<int>([next], one);
            logits = _model.ForwardWithCache(one, cache);
        }
    }
}
