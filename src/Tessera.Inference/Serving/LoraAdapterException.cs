namespace Tessera.Inference.Serving;

/// <summary>Why a LoRA adapter could not be loaded or unloaded (<see cref="InferenceEngine.LoadAdapterAsync"/>).</summary>
public enum LoraAdapterError
{
    /// <summary>The adapter or the request is invalid: a bad directory, targets or rank the slots do not serve, an empty name (HTTP 400).</summary>
    Invalid,

    /// <summary>No adapter of that name is served (HTTP 404).</summary>
    NotFound,

    /// <summary>The name is served already, or every slot is taken (HTTP 409).</summary>
    Conflict,
}

/// <summary>A refused load or unload of a LoRA adapter; nothing changed. The message says what was wrong and what to do.</summary>
public sealed class LoraAdapterException(LoraAdapterError error, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The kind of refusal.</summary>
    public LoraAdapterError Error { get; } = error;
}
