using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Tensors;

namespace Tessera.Inference;

/// <summary>
/// Autoregressive generation with a KV cache: one forward pass over the prompt (prefill), then one token at a time
/// (decode). Greedy decoding picks the token on the device (argmax) and reads back 4 bytes per token; sampling reads the
/// token's row of logits to the host for the <see cref="Sampler"/>. The decode step is recorded once and replayed where
/// the backend can (<see cref="GenerationOptions.CaptureGraph"/>).
/// </summary>
public sealed class TextGenerator
{
    private readonly Transformer _model;

    /// <summary>Generates with <paramref name="model"/>.</summary>
    public TextGenerator(Transformer model) => _model = model;

    /// <summary>Whether the decode step of the last generation replayed a recorded graph.</summary>
    public bool LastRunRecorded { get; private set; }

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
        bool greedy = options.Sampling.Temperature == 0;
        var cache = _model.CreateKvCache(batch: 1);
        var row = backend.Allocate(new Shape(1, config.VocabSize), DType.F32);
        var host = new float[config.VocabSize];
        int[] chosen = new int[1];
        var stop = options.StopTokens as ISet<int> ?? new HashSet<int>(options.StopTokens);
        using var step = new DecodeStep(_model, cache, greedy, options.CaptureGraph);
        LastRunRecorded = false;
        try
        {
            var tokens = backend.FromHost<int>(prompt.ToArray(), new Shape(1, prompt.Count));
            var logits = _model.ForwardWithCache(tokens, cache, validateTokens: false);   // (1, T, Vpad); the prompt was checked above
            tokens.Storage.Dispose();
            var last = logits.Select(0, 0).Select(0, logits.Size(1) - 1).Slice(0, 0, config.VocabSize).Reshape(1, config.VocabSize);
            int next = greedy ? ArgMax(last, step.Tokens, chosen) : Sample(last, row, host, sampler);
            for (int produced = 0; ; )
            {
                if (stop.Contains(next)) yield break;
                yield return next;
                produced++;
                // The token just produced sits at position cache.Length; the context ends there when that is its last slot.
                if (cache.Length + 1 >= config.MaxSequenceLength || produced >= options.MaxNewTokens) yield break;
                if (!greedy)
                {
                    chosen[0] = next;
                    backend.CopyFromHost<int>(chosen, step.Tokens);
                }
                step.Run();                                          // greedy: the step's argmax lands in step.Tokens
                LastRunRecorded = step.Recorded;
                if (greedy)
                {
                    backend.CopyToHost<int>(step.Tokens, chosen);
                    next = chosen[0];
                }
                else next = Sample(step.Logits!, row, host, sampler);
            }
        }
        finally
        {
            row.Storage.Dispose();
        }
    }

    private int ArgMax(Tensor logits, Tensor tokens, int[] chosen)
    {
        var backend = _model.Parameters.Backend;
        backend.ArgMax(logits, tokens.Reshape(1));
        backend.CopyToHost<int>(tokens, chosen);
        return chosen[0];
    }

    private int Sample(Tensor logits, Tensor row, float[] host, Sampler sampler)
    {
        var backend = _model.Parameters.Backend;
        backend.Copy(logits, row);                                   // (1, V) cast to F32
        backend.CopyToHost<float>(row, host);
        return sampler.Sample(host, host.Length);
    }
}
