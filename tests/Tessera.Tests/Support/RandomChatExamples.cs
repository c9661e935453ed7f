using Tessera.Training.Data;

namespace Tessera.Tests.Support;

/// <summary>Chat examples of random tokens for the LoRA training tests: lengths 8 to 16, tokens below 96 (the debug presets'
/// vocabulary), the reply (the positions that count in the loss) starting at a random position from 2 on.</summary>
internal static class RandomChatExamples
{
    public static List<ChatExample> Draw(int seed, int count)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(i =>
        {
            int n = 8 + rng.Next(9), start = 2 + rng.Next(n - 3);
            return new ChatExample(i + 1, Enumerable.Range(0, n).Select(_ => rng.Next(96)).ToArray(), Enumerable.Range(0, n).Select(j => j >= start).ToArray());
        }).ToList();
    }
}
