using System.Text.Json;
using System.Text.Json.Nodes;
using Tessera.Models.Chat;
using Tessera.Models.Tokenization;

namespace Tessera.Training.Data;

/// <summary>
/// Reads supervised fine-tuning data: a jsonl file, one conversation per line as <c>{"messages": [{"role": ..., "content": ...},
/// ...]}</c> (blank lines skipped), rendered with the model's chat template and tokenized, with the assistant turns marked.
/// <para>
/// Which tokens are the assistant's: for each assistant message i, the template's rendering of messages [0, i) with the
/// generation prompt must be a prefix of its rendering of [0, i], which must be a prefix of the whole conversation's; the
/// characters between the two are the turn (its content and the end-of-turn text the template writes after it, so the model
/// learns to stop). The text is cut at those boundaries and each piece tokenized on its own, so no token straddles a boundary
/// (a token merge across one is lost: the price of an exact mask, as in TRL's assistant-only loss).
/// </para>
/// </summary>
public static class ChatDataset
{
    /// <summary>
    /// Every conversation of <paramref name="path"/>, tokenized. Throws <see cref="InvalidDataException"/> naming the line and
    /// field for a line that is not JSON, has no "messages" list, a message without string "role" and "content", no assistant
    /// turn, or that the template refuses or renders inconsistently.
    /// </summary>
    public static IReadOnlyList<ChatExample> Read(string path, ChatFormat format, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(format);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such chat data file", path);
        var examples = new List<ChatExample>();
        int line = 0;
        foreach (var text in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            examples.Add(Tokenize(line, Parse(path, line, text), format, tokenizer, path));
        }
        if (examples.Count == 0) throw new InvalidDataException($"{path}: no conversations (expected one {{\"messages\": [...]}} per line)");
        return examples;
    }

    /// <summary>The messages of one jsonl line.</summary>
    public static IReadOnlyList<ChatMessage> Parse(string path, int line, string text)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(text);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}:{line}: not valid JSON ({e.Message})", e);
        }
        if (root is not JsonObject obj) throw new InvalidDataException($"{path}:{line}: expected a JSON object {{\"messages\": [...]}}");
        if (obj["messages"] is not JsonArray list) throw new InvalidDataException($"{path}:{line}: field \"messages\" is missing or not a list");
        var messages = new List<ChatMessage>(list.Count);
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] is not JsonObject m) throw new InvalidDataException($"{path}:{line}: messages[{i}] is not an object");
            string role = Field(m, "role", i), content = Field(m, "content", i);
            messages.Add(new ChatMessage(role, content));
        }
        if (!messages.Any(m => m.Role == "assistant"))
            throw new InvalidDataException($"{path}:{line}: no assistant turn (no message has \"role\": \"assistant\"), so nothing would be learned from it");
        return messages;

        string Field(JsonObject m, string name, int i) =>
            m[name] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>()
                : throw new InvalidDataException($"{path}:{line}: messages[{i}].{name} is missing or not a string");
    }

    private static ChatExample Tokenize(int line, IReadOnlyList<ChatMessage> messages, ChatFormat format, ITokenizer tokenizer, string path)
    {
        string whole = Render(messages, messages.Count, false);
        var pieces = new List<(string Text, bool Trained)>();
        int at = 0;
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != "assistant") continue;
            string prompt = Render(messages, i, true), turn = Render(messages, i + 1, false);
            if (!turn.StartsWith(prompt, StringComparison.Ordinal) || !whole.StartsWith(turn, StringComparison.Ordinal) || prompt.Length < at)
                throw new InvalidDataException($"{path}:{line}: messages[{i}]: the chat template does not render the conversation up to this turn as a prefix of the whole, so its tokens cannot be told apart");
            pieces.Add((whole[at..prompt.Length], false));
            pieces.Add((whole[prompt.Length..turn.Length], true));
            at = turn.Length;
        }
        pieces.Add((whole[at..], false));
        var tokens = new List<int>();
        var trained = new List<bool>();
        foreach (var (text, isTrained) in pieces)
        {
            if (text.Length == 0) continue;
            var ids = tokenizer.Encode(text);
            tokens.AddRange(ids);
            trained.AddRange(Enumerable.Repeat(isTrained, ids.Length));
        }
        return new ChatExample(line, [.. tokens], [.. trained]);

        string Render(IReadOnlyList<ChatMessage> all, int count, bool generationPrompt)
        {
            try
            {
                return format.Template.Render(all.Take(count).ToList(), generationPrompt, format.BosToken, format.EosToken);
            }
            catch (ChatTemplateException e)
            {
                throw new InvalidDataException($"{path}:{line}: the chat template refused the conversation: {e.Problem}", e);
            }
        }
    }
}
