namespace Tessera.Training.Runs;

/// <summary>One setting a resumed run would change against its checkpoint.</summary>
/// <param name="Setting">The <see cref="TrainerOptions"/> field (or "GlobalBatch": rows per update over all ranks and micro-batches).</param>
/// <param name="Saved">Its value in the checkpoint.</param>
/// <param name="Requested">Its value in the resumed run.</param>
public sealed record RunChange(string Setting, string Saved, string Requested)
{
    /// <summary>"Setting: saved -> requested".</summary>
    public override string ToString() => $"{Setting}: {Saved} -> {Requested}";
}
