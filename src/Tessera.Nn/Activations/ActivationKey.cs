namespace Tessera.Nn;

/// <summary>
/// The name of a saved tensor or buffer, e.g. "blocks.3.attn.qkv.out", with its role
/// "attn.qkv.out" (the name less a leading "group.index." pair) precomputed: shared slots key by
/// role so that all blocks reuse one set of buffers. Layers create their keys once, at construction.
/// </summary>
public sealed class ActivationKey
{
    /// <summary>Creates a key from its full name.</summary>
    public ActivationKey(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Name = name;
        Role = RoleOf(name);
    }

    /// <summary>Full name, unique in the model.</summary>
    public string Name { get; }

    /// <summary>The name without a leading "group.index." pair; equal for the same tensor of every block.</summary>
    public string Role { get; }

    /// <summary>"blocks.3.attn.qkv.out" -> "attn.qkv.out" (second segment all digits); other names unchanged.</summary>
    public static string RoleOf(string name)
    {
        int first = name.IndexOf('.');
        if (first <= 0) return name;
        int second = name.IndexOf('.', first + 1);
        if (second <= first + 1) return name;
        for (int i = first + 1; i < second; i++)
            if (!char.IsAsciiDigit(name[i])) return name;
        return name.Substring(second + 1);
    }

    /// <summary>A key for <paramref name="name"/>.</summary>
    public static implicit operator ActivationKey(string name) => new(name);

    public override string ToString() => Name;
}
