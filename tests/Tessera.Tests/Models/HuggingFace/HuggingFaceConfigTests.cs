using Tessera.Models;
using Tessera.Models.HuggingFace;
using Xunit;

namespace Tessera.Tests.Models.HuggingFace;

public sealed class HuggingFaceConfigTests
{
    private const string Gpt2Json = """
        {"architectures":["GPT2LMHeadModel"],"model_type":"gpt2","vocab_size":50257,"n_positions":1024,"n_ctx":1024,
         "n_embd":768,"n_layer":12,"n_head":12,"n_inner":null,"activation_function":"gelu_new","layer_norm_epsilon":1e-05}
        """;

    private const string LlamaJson = """
        {"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":128256,"max_position_embeddings":8192,
         "hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
         "hidden_act":"silu","rms_norm_eps":1e-05,"rope_theta":500000.0,"rope_scaling":null,"attention_bias":false,
         "mlp_bias":false,"tie_word_embeddings":false,"head_dim":128}
        """;

    [Fact]
    public void Gpt2ConfigMapsEveryFieldAndDefaultsInnerToFourTimesWidthAndTiesHead()
    {
        var c = HuggingFaceConfig.Parse(Gpt2Json, "config.json", paddedVocabMultiple: 128);
        Assert.Equal(ModelFamily.Gpt2, c.Family);
        Assert.Equal((50257, 50304, 1024, 12, 768, 12, 3072, true, true),
            (c.VocabSize, c.PaddedVocabSize, c.MaxSequenceLength, c.Layers, c.Embedding, c.Heads, c.EffectiveHidden, c.TiedEmbeddings, c.Bias));
        Assert.Equal(1e-5, c.NormEpsilon);
    }

    [Fact]
    public void LlamaConfigMapsGroupedQueryAttentionRopeAndUntiedHead()
    {
        var c = HuggingFaceConfig.Parse(LlamaJson, "config.json");
        Assert.Equal(ModelFamily.Llama, c.Family);
        Assert.Equal((128256, 8192, 32, 4096, 32, 8, 14336, false, false),
            (c.VocabSize, c.MaxSequenceLength, c.Layers, c.Embedding, c.Heads, c.EffectiveKvHeads, c.EffectiveHidden, c.TiedEmbeddings, c.Bias));
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal(1e-5, c.NormEpsilon);
    }

    [Theory]
    [InlineData("\"n_embd\":768,", "", "'n_embd': is missing")]
    [InlineData("\"activation_function\":\"gelu_new\"", "\"activation_function\":\"relu\"", "'activation_function': 'relu' is not supported")]
    [InlineData("\"n_head\":12", "\"n_head\":7", "Heads (7) must divide Embedding (768)")]
    [InlineData("\"n_layer\":12", "\"n_layer\":\"12\"", "'n_layer': must be an integer")]
    [InlineData("\"model_type\":\"gpt2\"", "\"model_type\":\"bert\"", "field 'model_type': 'bert' is not supported (supported: gpt2, llama, qwen2, qwen3, mistral, mixtral, qwen3_moe, qwen2_moe, gemma2, gemma3_text, phi3)")]
    public void BadGpt2FieldsAreRejectedNamingFileAndField(string from, string to, string expected)
    {
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(Gpt2Json.Replace(from, to), "dir/config.json"));
        Assert.StartsWith("dir/config.json: ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("\"rope_scaling\":null", "\"rope_scaling\":{\"rope_type\":\"longrope\",\"factor\":8.0}", "field 'rope_scaling.rope_type': 'longrope' is not supported")]
    [InlineData("\"rope_scaling\":null", "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}", "field 'rope_scaling.low_freq_factor': is missing")]
    [InlineData("\"rope_scaling\":null", "\"rope_scaling\":{\"rope_type\":\"linear\"}", "field 'rope_scaling.factor': is missing")]
    [InlineData("\"rope_scaling\":null", "\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":0.5}", "factor (0.5) must be a finite number of at least 1")]
    [InlineData("\"rope_theta\":500000.0", "\"rope_theta\":-1", "field 'rope_theta': must be a positive number")]
    [InlineData("\"attention_bias\":false", "\"attention_bias\":true", "'attention_bias'")]
    [InlineData("\"mlp_bias\":false", "\"mlp_bias\":true", "'mlp_bias'")]
    [InlineData("\"hidden_act\":\"silu\"", "\"hidden_act\":\"gelu\"", "'hidden_act'")]
    [InlineData("\"head_dim\":128", "\"head_dim\":0", "'head_dim': 0 must be positive")]
    [InlineData("\"head_dim\":128", "\"head_dim\":63", "RoPE needs an even head size, got 63")]
    [InlineData("\"num_key_value_heads\":8", "\"num_key_value_heads\":5", "KvHeads (5) must divide Heads (32)")]
    [InlineData("\"intermediate_size\":14336,", "", "'intermediate_size': is missing")]
    public void BadLlamaFieldsAreRejectedNamingFileAndField(string from, string to, string expected)
    {
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(LlamaJson.Replace(from, to), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("gpt2-124m")]
    [InlineData("gpt2-debug")]
    [InlineData("llama-8b")]
    [InlineData("llama-debug")]
    [InlineData("llama-headsize-debug")]   // head_dim 16 != hidden_size / num_attention_heads
    [InlineData("qwen3-debug")]
    [InlineData("mixtral-debug")]
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]
    [InlineData("gemma2-debug")]
    [InlineData("gemma3-debug")]
    [InlineData("phi3-debug")]
    [InlineData("phi4-mini-debug")]
    public void WrittenConfigParsesBackToTheSameModel(string preset)
    {
        var c = ModelPresets.Get(preset);
        var json = HuggingFaceConfig.ToJson(c);
        Assert.Contains("\"architectures\"", json);
        Assert.Contains("\"torch_dtype\": \"float32\"", json);
        var back = HuggingFaceConfig.Parse(json, "config.json");
        // Padding is Tessera's choice and is not exported; compare the rest.
        Assert.Equal(c with { PaddedVocabSize = 0, Hidden = c.EffectiveHidden, KvHeads = c.EffectiveKvHeads, ModelType = c.EffectiveModelType },
            back with { PaddedVocabSize = 0, Hidden = back.EffectiveHidden, KvHeads = back.EffectiveKvHeads, ModelType = back.EffectiveModelType });
    }

    /// <summary>
    /// transformers 5 checks the types of its config fields, and a float field written as a whole number without a point is
    /// refused as an int (seen on the GPU machine with transformers 5.17: Mixtral's router_jitter_noise 0). Every float field
    /// of a written config keeps its point when it is whole; integer fields stay integers (query_pre_attn_scalar among them).
    /// </summary>
    [Theory]
    [InlineData("mixtral-debug", "\"router_jitter_noise\": 0.0", "num_local_experts")]
    [InlineData("gemma2-debug", "\"final_logit_softcapping\": 3.0", "query_pre_attn_scalar")]
    [InlineData("gemma2-debug", "\"attn_logit_softcapping\": 5.0", "head_dim")]
    [InlineData("gemma3-debug", "\"factor\": 8.0", "sliding_window")]
    [InlineData("llama-debug", "\"attention_dropout\": 0.0", "num_hidden_layers")]
    [InlineData("phi3-debug", "\"resid_pdrop\": 0.0", "original_max_position_embeddings")]
    public void WholeFloatsAreWrittenWithAPointAndIntegersWithout(string preset, string floatField, string intField)
    {
        var json = HuggingFaceConfig.ToJson(ModelPresets.Get(preset));
        Assert.Contains(floatField, json);
        Assert.Matches($"\"{intField}\": [0-9]+,", json);
        Assert.Equal(HuggingFaceConfig.Parse(json, "config.json"), HuggingFaceConfig.Parse(json.Replace(".0,", ","), "config.json"));
    }
}
