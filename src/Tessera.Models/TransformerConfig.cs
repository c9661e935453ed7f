using System.Text.Json.Serialization;

namespace Tessera.Models;

/// <summary>
/// Shape and wiring of a decoder-only transformer: GPT-2 and Llama are points in this space.
/// Validated at construction (<see cref="Validate"/>) with messages that name the field.
/// </summary>
public sealed record TransformerConfig
{
    /// <summary>Architectural family; default GPT-2.</summary>
    public ModelFamily Family { get; init; } = ModelFamily.Gpt2;

    /// <summary>Vocabulary size actually used by the tokenizer (tokens). GPT-2: 50257.</summary>
    public int VocabSize { get; init; } = 50257;

    /// <summary>Rows of the embedding and LM-head matrices (tokens); at least <see cref="VocabSize"/>,
    /// rounded up (e.g. to 50304) for faster matrix products. Default: equal to VocabSize.</summary>
    public int PaddedVocabSize { get; init; }

    /// <summary>Longest sequence the model accepts (tokens); learned position table size for GPT-2.</summary>
    public int MaxSequenceLength { get; init; } = 1024;

    /// <summary>Number of transformer blocks.</summary>
    public int Layers { get; init; } = 12;

    /// <summary>Residual stream width C (channels).</summary>
    public int Embedding { get; init; } = 768;

    /// <summary>Number of query heads H; must divide <see cref="Embedding"/>.</summary>
    public int Heads { get; init; } = 12;

    /// <summary>Number of key/value heads K (grouped-query attention); must divide Heads. Default: Heads.</summary>
    public int KvHeads { get; init; }

    /// <summary>MLP hidden width F (channels). Default: 4 * Embedding.</summary>
    public int Hidden { get; init; }

    /// <summary>Normalization epsilon. GPT-2: 1e-5; Llama: 1e-5 (HF rms_norm_eps).</summary>
    public double NormEpsilon { get; init; } = 1e-5;

    /// <summary>RoPE base theta (Llama only). Default 10000; Llama 3: 500000.</summary>
    public double RopeTheta { get; init; } = 10000;

    /// <summary>Whether the LM head shares the token embedding matrix. GPT-2: true.</summary>
    public bool TiedEmbeddings { get; init; } = true;

    /// <summary>Whether linear layers and norms carry biases. GPT-2: true; Llama: false.</summary>
    public bool Bias { get; init; } = true;

    /// <summary>Standard deviation of the normal weight initialization. Default 0.02.</summary>
    public double InitStd { get; init; } = 0.02;

    /// <summary>Head size D = Embedding / Heads.</summary>
    [JsonIgnore] public int HeadSize => Embedding / Heads;

    /// <summary>Rows of the embedding table actually allocated.</summary>
    [JsonIgnore] public int EffectivePaddedVocab => PaddedVocabSize > 0 ? PaddedVocabSize : VocabSize;

    /// <summary>Key/value heads actually used.</summary>
    [JsonIgnore] public int EffectiveKvHeads => KvHeads > 0 ? KvHeads : Heads;

    /// <summary>MLP width actually used.</summary>
    [JsonIgnore] public int EffectiveHidden => Hidden > 0 ? Hidden : 4 * Embedding;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent field.</summary>
    public TransformerConfig Validate()
    {
        void Positive(int value, string name)
        {
            if (value <= 0) throw new ArgumentException($"TransformerConfig: {name} ({value}) must be positive");
        }
        Positive(VocabSize, nameof(VocabSize));
        Positive(MaxSequenceLength, nameof(MaxSequenceLength));
        Positive(Layers, nameof(Layers));
        Positive(Embedding, nameof(Embedding));
        Positive(Heads, nameof(Heads));
        if (PaddedVocabSize != 0 && PaddedVocabSize < VocabSize)
            throw new ArgumentException($"TransformerConfig: PaddedVocabSize ({PaddedVocabSize}) must be at least VocabSize ({VocabSize})");
        if (Embedding % Heads != 0)
            throw new ArgumentException($"TransformerConfig: Heads ({Heads}) must divide Embedding ({Embedding})");
        if (KvHeads < 0 || EffectiveKvHeads > Heads || Heads % EffectiveKvHeads != 0)
            throw new ArgumentException($"TransformerConfig: KvHeads ({KvHeads}) must divide Heads ({Heads})");
        if (Hidden < 0) throw new ArgumentException($"TransformerConfig: Hidden ({Hidden}) must not be negative");
        if (!(NormEpsilon > 0)) throw new ArgumentException($"TransformerConfig: NormEpsilon ({NormEpsilon}) must be positive");
        if (Family == ModelFamily.Llama && HeadSize % 2 != 0)
            throw new ArgumentException($"TransformerConfig: RoPE needs an even head size, got {HeadSize}");
        if (Family == ModelFamily.Llama && !(RopeTheta > 0))
            throw new ArgumentException($"TransformerConfig: RopeTheta ({RopeTheta}) must be positive");
        if (!(InitStd > 0)) throw new ArgumentException($"TransformerConfig: InitStd ({InitStd}) must be positive");
        return this;
    }
}
