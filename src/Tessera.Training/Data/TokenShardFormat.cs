namespace Tessera.Training.Data;

/// <summary>
/// The two token widths of llm.c's shard format, told apart by the header's magic number and version as llm.c's data
/// scripts write them (dev/data/data_common.py, HEADERS_INFO): GPT-2's uint16 tokens, Llama 3's uint32 tokens.
/// </summary>
public enum TokenShardFormat
{
    /// <summary>Magic 20240520, version 1, uint16 tokens (vocabularies of at most 65,536 entries).</summary>
    Uint16,
    /// <summary>Magic 20240801, version 7, uint32 tokens (Llama 3's 128,256 entries and other large vocabularies).</summary>
    Uint32,
}
