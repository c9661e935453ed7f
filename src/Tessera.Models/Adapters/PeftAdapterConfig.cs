using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tessera.Models.Adapters;

/// <summary>
/// adapter_config.json of a PEFT LoRA adapter: what Tessera writes and what it reads back. Features Tessera does not implement
/// (DoRA, rsLoRA, trained biases, modules_to_save, per-layer ranks) are refused on reading, naming the field. fan_in_fan_out is
/// read and written but changes nothing here: PEFT sets it per layer type itself (true for GPT-2's Conv1D, false for nn.Linear),
/// and lora_A (r, in) and lora_B (out, r) are laid out the same either way.
/// </summary>
/// <param name="Rank">r.</param>
/// <param name="Alpha">lora_alpha.</param>
/// <param name="Dropout">lora_dropout.</param>
/// <param name="TargetModules">target_modules (PEFT module names: q_proj, ...).</param>
/// <param name="BaseModel">base_model_name_or_path, or null.</param>
/// <param name="FanInFanOut">fan_in_fan_out: whether the adapted layers store W as (in, out) (GPT-2's Conv1D).</param>
public sealed record PeftAdapterConfig(int Rank, double Alpha, double Dropout, IReadOnlyList<string> TargetModules, string? BaseModel, bool FanInFanOut = false)
{
    /// <summary>The file name.</summary>
    public const string FileName = "adapter_config.json";

    /// <summary>The JSON PEFT writes for a LoRA adapter of a causal LM (its LoraConfig's fields, defaults where Tessera has no choice).</summary>
    public string ToJson()
    {
        var root = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["r"] = Rank,
            ["lora_alpha"] = Alpha,
            ["lora_dropout"] = Dropout,
            ["target_modules"] = new JsonArray(TargetModules.Select(m => (JsonNode?)m).ToArray()),
            ["base_model_name_or_path"] = BaseModel,
            ["bias"] = "none",
            ["fan_in_fan_out"] = FanInFanOut,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["use_rslora"] = false,
            ["use_dora"] = false,
            ["modules_to_save"] = null,
            ["layers_to_transform"] = null,
            ["layers_pattern"] = null,
            ["rank_pattern"] = new JsonObject(),
            ["alpha_pattern"] = new JsonObject(),
            ["revision"] = null,
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Reads <paramref name="path"/>; throws <see cref="InvalidDataException"/> naming the file and field for anything Tessera cannot apply.</summary>
    public static PeftAdapterConfig Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: missing (a PEFT adapter directory holds {FileName} and adapter_model.safetensors)", path);
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e);
        }
        string peftType = Text(root, "peft_type", path) ?? throw Missing("peft_type");
        if (peftType != "LORA") throw new InvalidDataException($"{path}: peft_type is '{peftType}'; only LORA adapters are supported");
        if (Text(root, "task_type", path) is string task && task != "CAUSAL_LM")
            throw new InvalidDataException($"{path}: task_type is '{task}'; only CAUSAL_LM adapters apply to a decoder");
        int rank = root["r"] is JsonValue r && r.TryGetValue<int>(out var ri) && ri >= 1 ? ri : throw new InvalidDataException($"{path}: r must be a positive integer");
        double alpha = root["lora_alpha"] is JsonValue a && a.TryGetValue<double>(out var ad) && ad > 0 ? ad : throw new InvalidDataException($"{path}: lora_alpha must be a positive number");
        double dropout = root["lora_dropout"] switch
        {
            null => 0,
            JsonValue d when d.TryGetValue<double>(out var dd) && dd >= 0 && dd < 1 => dd,
            _ => throw new InvalidDataException($"{path}: lora_dropout must be a number in [0, 1)"),
        };
        var modules = root["target_modules"] switch
        {
            JsonArray list => list.Select(n => n is JsonValue v && v.TryGetValue<string>(out var s) ? s : throw new InvalidDataException($"{path}: target_modules must list strings")).ToList(),
            JsonValue v when v.TryGetValue<string>(out var s) => throw new InvalidDataException($"{path}: target_modules is the regular expression '{s}'; list the module names instead"),
            _ => throw new InvalidDataException($"{path}: target_modules must be a list of module names"),
        };
        Refuse(root, "use_dora", true, "DoRA");
        Refuse(root, "use_rslora", true, "rank-stabilized LoRA");
        if (Text(root, "bias", path) is string bias && bias != "none") throw new InvalidDataException($"{path}: bias is '{bias}'; only 'none' is supported");
        foreach (var field in new[] { "modules_to_save", "layers_to_transform" })
            if (root[field] is JsonNode n && n.GetValueKind() != JsonValueKind.Null && !(n is JsonArray { Count: 0 }))
                throw new InvalidDataException($"{path}: {field} is set; adapters with {field} are not supported");
        foreach (var field in new[] { "rank_pattern", "alpha_pattern" })
            if (root[field] is JsonObject { Count: > 0 }) throw new InvalidDataException($"{path}: {field} is set; per-layer ranks and alphas are not supported");
        bool fanInFanOut = root["fan_in_fan_out"] switch
        {
            null => false,
            JsonValue f when f.TryGetValue<bool>(out var fb) => fb,
            _ => throw new InvalidDataException($"{path}: fan_in_fan_out must be true or false"),
        };
        return new PeftAdapterConfig(rank, alpha, dropout, modules, Text(root, "base_model_name_or_path", path), fanInFanOut);

        InvalidDataException Missing(string field) => new($"{path}: {field} is missing");

        void Refuse(JsonObject o, string field, bool value, string what)
        {
            if (o[field] is JsonValue v && v.TryGetValue<bool>(out var b) && b == value)
                throw new InvalidDataException($"{path}: {field} is {value.ToString().ToLowerInvariant()}; {what} is not supported");
        }
    }

    private static string? Text(JsonObject root, string field, string path) => root[field] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => throw new InvalidDataException($"{path}: {field} must be a string"),
    };
}
