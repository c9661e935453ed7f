namespace Tessera.Inference.Serving;

/// <summary>Why a choice ended (OpenAI's finish_reason).</summary>
public enum FinishReason
{
    /// <summary>An end-of-text token or a stop string ("stop").</summary>
    Stop,

    /// <summary>max_tokens reached, or the context is full ("length").</summary>
    Length,

    /// <summary>The client went away or cancelled (never sent: nobody is listening).</summary>
    Cancelled,
}
