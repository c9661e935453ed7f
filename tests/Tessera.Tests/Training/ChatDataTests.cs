using Tessera.Models;
using Tessera.Models.Chat;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Data;
using Xunit;

namespace Tessera.Tests.Training;

/// <summary>Chat jsonl for supervised fine-tuning: assistant-only targets, and errors that name the line and field.</summary>
public sealed class ChatDataTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-chat-").FullName;
    private static readonly ChatFormat ChatMl = new(ChatTemplate.Fallback, null, null, IsFallback: true);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(params string[] lines)
    {
        var path = Path.Combine(_dir, $"chat-{Guid.NewGuid():N}.jsonl");
        File.WriteAllLines(path, lines);
        return path;
    }

    private const string Conversation = """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao."}]}""";

    [Fact]
    public void OnlyTheAssistantTurnsAreTargets()
    {
        var tokenizer = new ByteTokenizer();
        var example = Assert.Single(ChatDataset.Read(Write(Conversation), ChatMl, tokenizer));
        // ChatML: each assistant turn's trained text is its content and the end-of-turn marker the template writes after it.
        string trained = new(example.Tokens.Where((_, i) => example.Trained[i]).Select(t => (char)t).ToArray());
        Assert.Equal("Hello!<|im_end|>\nCiao.<|im_end|>\n", trained);
        string whole = new(example.Tokens.Select(t => (char)t).ToArray());
        Assert.Equal(ChatMl.Template.Render(ChatDataset.Parse("x", 1, Conversation), false), whole);

        var loader = new ChatExampleLoader([example], 1, example.Tokens.Length - 1);
        var inputs = new int[example.Tokens.Length - 1];
        var targets = new int[inputs.Length];
        loader.NextBatch(inputs, targets);
        Assert.Equal(example.Tokens[..^1], inputs);
        for (int j = 0; j < targets.Length; j++) Assert.Equal(example.Trained[j + 1] ? example.Tokens[j + 1] : -1, targets[j]);
    }

    [Fact]
    public void ChangingATokenOutsideTheAssistantTurnsAfterThemDoesNotChangeTheLoss()
    {
        // A trailing user turn after the last assistant turn: its tokens are neither counted targets nor context of any counted
        // target (attention is causal), so the loss is bit-identical; changing an assistant token does change it.
        var tokenizer = new ByteTokenizer();
        const int T = 128;
        string With(string trailing, string reply) =>
            $$"""{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "{{reply}}"}, {"role": "user", "content": "{{trailing}}"}]}""";
        double Loss(string line)
        {
            var example = Assert.Single(ChatDataset.Read(Write(line), ChatMl, tokenizer));
            var cpu = new CpuBackend(1);
            var config = ModelPresets.Get("llama-debug") with { VocabSize = 256, MaxSequenceLength = T };
            var model = new Transformer(config, cpu, DType.F64, ArenaStorage.Frozen);
            model.InitializeWeights(5);
            Assert.True(example.Tokens.Length <= T, "the whole conversation, trailing turn included, must fit in the row");
            var loader = new ChatExampleLoader([example], 1, T);
            var inputs = new int[T];
            var targets = new int[T];
            loader.NextBatch(inputs, targets);
            var tk = cpu.Allocate(new Shape(1, T), DType.I32);
            var tg = cpu.Allocate(new Shape(1, T), DType.I32);
            cpu.CopyFromHost<int>(inputs, tk);
            cpu.CopyFromHost<int>(targets, tg);
            var losses = model.Loss(tk, tg, 0, lossScale: 0);
            var sum = cpu.Allocate(new Shape(1), DType.F64);
            cpu.Sum(losses, sum);
            return cpu.ReadScalar(sum);
        }
        double baseline = Loss(With("Thanks", "Hey"));
        Assert.Equal(baseline, Loss(With("Other words", "Hey")));
        Assert.NotEqual(baseline, Loss(With("Thanks", "Yo!")));
    }

    [Fact]
    public void BadLinesAreRefusedNamingTheLineAndField()
    {
        var tokenizer = new ByteTokenizer();
        var e = Assert.Throws<InvalidDataException>(() => ChatDataset.Read(Write(Conversation, "", """{"messages": [{"role": "user", "content": "Hi"}]}"""), ChatMl, tokenizer));
        Assert.Contains(":3: no assistant turn", e.Message);
        e = Assert.Throws<InvalidDataException>(() => ChatDataset.Read(Write(Conversation, "{not json"), ChatMl, tokenizer));
        Assert.Contains(":2: not valid JSON", e.Message);
        e = Assert.Throws<InvalidDataException>(() => ChatDataset.Read(Write("""{"text": "hello"}"""), ChatMl, tokenizer));
        Assert.Contains(":1: field \"messages\" is missing", e.Message);
        e = Assert.Throws<InvalidDataException>(() => ChatDataset.Read(Write("""{"messages": [{"role": "assistant", "content": 3}]}"""), ChatMl, tokenizer));
        Assert.Contains(":1: messages[0].content is missing or not a string", e.Message);
    }
}
