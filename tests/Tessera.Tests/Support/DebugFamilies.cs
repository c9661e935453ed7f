using Xunit;

namespace Tessera.Tests.Support;

/// <summary>The debug preset of each model family the Hugging Face import knows, for theories that must hold for all of them.</summary>
public static class DebugFamilies
{
    public static TheoryData<string> Each => new() { "gpt2-debug", "llama-debug", "llama3-debug", "qwen2-debug", "mistral-debug" };
}
