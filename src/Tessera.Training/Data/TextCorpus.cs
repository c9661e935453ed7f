using System.Text;
using System.Text.Json;

namespace Tessera.Training.Data;

/// <summary>
/// Reads the documents of a corpus file: a jsonl file (".jsonl", ".ndjson"; one JSON object per line, the document in its
/// string field "text" as Hugging Face datasets export it, blank lines skipped), or plain UTF-8 text (any other name), where
/// the whole file is one document.
/// </summary>
public static class TextCorpus
{
    /// <summary>Whether <paramref name="path"/> is read as JSON lines.</summary>
    public static bool IsJsonLines(string path) =>
        path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".ndjson", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The documents of <paramref name="path"/>, read lazily; <paramref name="bytesRead"/> is told how many bytes each
    /// document consumed. jsonl lines without a string <paramref name="textField"/> throw naming the file, line and field.
    /// </summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">A jsonl line is not a JSON object with a string text field.</exception>
    public static IEnumerable<CorpusDocument> Read(string path, string textField = "text", Action<long>? bytesRead = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such corpus file", path);
        return IsJsonLines(path) ? ReadJsonLines(path, textField, bytesRead) : ReadWhole(path, bytesRead);
    }

    private static IEnumerable<CorpusDocument> ReadWhole(string path, Action<long>? bytesRead)
    {
        var bytes = File.ReadAllBytes(path);
        bytesRead?.Invoke(bytes.Length);
        yield return new CorpusDocument(new UTF8Encoding(false, throwOnInvalidBytes: false).GetString(bytes), path);
    }

    private static IEnumerable<CorpusDocument> ReadJsonLines(string path, string textField, Action<long>? bytesRead)
    {
        using var reader = new StreamReader(path, new UTF8Encoding(false, throwOnInvalidBytes: false));
        int lineNumber = 0;
        for (string? line = reader.ReadLine(); line is not null; line = reader.ReadLine())
        {
            lineNumber++;
            bytesRead?.Invoke(Encoding.UTF8.GetByteCount(line) + 1);
            if (string.IsNullOrWhiteSpace(line)) continue;
            string where = $"{path}:{lineNumber}";
            string? text;
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    throw new InvalidDataException($"{where}: expected a JSON object with a \"{textField}\" field, got {doc.RootElement.ValueKind}");
                if (!doc.RootElement.TryGetProperty(textField, out var field))
                    throw new InvalidDataException($"{where}: the object has no \"{textField}\" field");
                if (field.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{where}: field \"{textField}\" must be a string, got {field.ValueKind}");
                text = field.GetString();
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{where}: not valid JSON ({e.Message})", e);
            }
            yield return new CorpusDocument(text ?? "", where);
        }
    }
}
