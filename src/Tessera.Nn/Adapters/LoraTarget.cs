namespace Tessera.Nn.Adapters;

/// <summary>
/// One kind of layer that LoRA adapts, in Tessera's canonical names: a layer name pattern ("blocks.*.attn.qkv", "*" standing
/// for one name segment) and, for a layer whose output is declared in parts (the fused QKV: query, key and value heads), the
/// part adapted. The adapter's parameters are "{layer}.{Name}.lora_A" and "...lora_B" for a part, "{layer}.lora_A" for a whole layer.
/// </summary>
/// <param name="LayerPattern">Canonical layer name pattern, e.g. "blocks.*.mlp.gate".</param>
/// <param name="Part">Index of the output part adapted (0 query, 1 key, 2 value of a fused QKV), or null for the whole layer.</param>
/// <param name="Name">The target's name (the part's name in parameter names, and what messages call it): "q", "o", "down".</param>
public sealed record LoraTarget(string LayerPattern, int? Part, string Name)
{
    /// <summary>
    /// A second layer pattern adapted by the same adapter, for a module a checkpoint fuses over two Tessera layers (Phi-3's
    /// mlp.gate_up_proj over "blocks.*.mlp.gate", then "blocks.*.mlp.up"): one lora_A, declared by the <see cref="LayerPattern"/>
    /// layer, which the second layer of the same block reads too (so A's gradient is the sum of both layers' terms, and both draw
    /// one dropout stream: one dropout(x), as the fused module applies), and lora_B split by rows: the first layer's rows, then
    /// this one's ("{layer}.lora_B" of each). A whole-layer target only (<see cref="Part"/> null). Null: one layer.
    /// </summary>
    public string? FusedWith { get; init; }

    /// <summary>Whether layer <paramref name="layer"/> matches the pattern or <see cref="FusedWith"/> (segment by segment, "*" matching any one segment).</summary>
    public bool Matches(string layer)
    {
        ArgumentNullException.ThrowIfNull(layer);
        return Matches(LayerPattern, layer) || (FusedWith is not null && Matches(FusedWith, layer));
    }

    /// <summary>
    /// For a layer that <see cref="FusedWith"/> matches: the layer of the same block whose A it shares (<see cref="LayerPattern"/>
    /// with each "*" taken from <paramref name="layer"/>: blocks.3.mlp.up -> blocks.3.mlp.gate); null for a layer with its own A.
    /// </summary>
    public string? OwnerOf(string layer)
    {
        ArgumentNullException.ThrowIfNull(layer);
        if (FusedWith is null || Matches(LayerPattern, layer) || !Matches(FusedWith, layer)) return null;
        var owner = LayerPattern.Split('.');
        var name = layer.Split('.');
        if (owner.Length != name.Length) throw new ArgumentException($"LoRA target '{Name}': '{LayerPattern}' and layer '{layer}' differ in depth");
        for (int i = 0; i < owner.Length; i++)
            if (owner[i] == "*") owner[i] = name[i];
        return string.Join('.', owner);
    }

    private static bool Matches(string layerPattern, string layer)
    {
        var pattern = layerPattern.Split('.');
        var name = layer.Split('.');
        if (pattern.Length != name.Length) return false;
        for (int i = 0; i < pattern.Length; i++)
            if (pattern[i] != "*" && !string.Equals(pattern[i], name[i], StringComparison.Ordinal)) return false;
        return true;
    }
}
