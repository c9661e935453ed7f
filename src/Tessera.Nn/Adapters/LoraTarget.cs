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
    /// <summary>Whether layer <paramref name="layer"/> matches the pattern (segment by segment, "*" matching any one segment).</summary>
    public bool Matches(string layer)
    {
        ArgumentNullException.ThrowIfNull(layer);
        var pattern = LayerPattern.Split('.');
        var name = layer.Split('.');
        if (pattern.Length != name.Length) return false;
        for (int i = 0; i < pattern.Length; i++)
            if (pattern[i] != "*" && !string.Equals(pattern[i], name[i], StringComparison.Ordinal)) return false;
        return true;
    }
}
