using System.Text.Json.Serialization;

namespace Tessera.Server.Contracts;

/// <summary>
/// The fields OpenAI's chat and completions request bodies share (the model, token limit, sampling, seed, stop strings,
/// choices, penalties, streaming), read the same way by both endpoints; each body adds its own prompt and logprobs fields.
/// </summary>
public abstract class SamplingRequestBody
{
    public string? Model { get; set; }
    public int? MaxTokens { get; set; }
    public double? Temperature { get; set; }
    public double? TopP { get; set; }
    public int? TopK { get; set; }
    public long? Seed { get; set; }
    [JsonConverter(typeof(StopConverter))]
    public List<string>? Stop { get; set; }
    public int? N { get; set; }
    public double? PresencePenalty { get; set; }
    public double? FrequencyPenalty { get; set; }
    public Dictionary<string, double>? LogitBias { get; set; }
    public ResponseFormatBody? ResponseFormat { get; set; }
    public bool? Stream { get; set; }
    public StreamOptionsBody? StreamOptions { get; set; }
}
