namespace Tessera.Training.Data;

/// <summary>
/// One tokenized conversation for supervised fine-tuning: its tokens and, per token, whether it belongs to an assistant turn
/// (those are the only tokens the loss predicts).
/// </summary>
/// <param name="Line">The jsonl line it came from (1-based), for messages.</param>
/// <param name="Tokens">The rendered conversation's tokens.</param>
/// <param name="Trained">Per token: whether it is an assistant token (a target of the loss).</param>
public sealed record ChatExample(int Line, int[] Tokens, bool[] Trained)
{
    /// <summary>Assistant tokens.</summary>
    public int TrainedCount => Trained.Count(t => t);
}
