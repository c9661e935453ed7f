using Tessera.Models;
using Tessera.Models.HuggingFace;
using Xunit;

namespace Tessera.Tests.Models.HuggingFace;

/// <summary>config.json of Llama 3.x (RoPE scaling), Qwen2 and Mistral: what is read, what round-trips, what is refused.</summary>
public sealed class HuggingFaceFamilyConfigTests
{
    // Llama 3.2 1B's config.json as transformers 4 writes it (rope_theta beside rope_scaling).
    private const string Llama32Json = """
        {"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":128256,"max_position_embeddings":131072,
         "hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,
         "hidden_act":"silu","rms_norm_eps":1e-05,"rope_theta":500000.0,"attention_bias":false,"mlp_bias":false,
         "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},
         "tie_word_embeddings":true,"head_dim":64,"bos_token_id":128000,"eos_token_id":128001}
        """;

    // The same as transformers 5 writes it (theta inside rope_parameters).
    private const string Llama32Json5 = """
        {"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":128256,"max_position_embeddings":131072,
         "hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,
         "hidden_act":"silu","rms_norm_eps":1e-05,"attention_bias":false,"mlp_bias":false,
         "rope_parameters":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3","rope_theta":500000.0},
         "tie_word_embeddings":true,"head_dim":64}
        """;

    private const string Qwen25Json = """
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":151936,"max_position_embeddings":32768,
         "hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
         "hidden_act":"silu","rms_norm_eps":1e-06,"rope_theta":1000000.0,"rope_scaling":null,"sliding_window":32768,
         "use_sliding_window":false,"max_window_layers":21,"tie_word_embeddings":true,"bos_token_id":151643,"eos_token_id":151643}
        """;

    private const string Mistral01Json = """
        {"architectures":["MistralForCausalLM"],"model_type":"mistral","vocab_size":32000,"max_position_embeddings":32768,
         "hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
         "hidden_act":"silu","rms_norm_eps":1e-05,"rope_theta":10000.0,"sliding_window":4096,"tie_word_embeddings":false}
        """;

    [Fact]
    public void Llama32ReadsLlama3ScalingFromEitherTransformersSpelling()
    {
        var c4 = HuggingFaceConfig.Parse(Llama32Json, "config.json");
        var c5 = HuggingFaceConfig.Parse(Llama32Json5, "config.json");
        Assert.Equal(new RopeScaling { Type = RopeScalingType.Llama3, Factor = 32, LowFrequencyFactor = 1, HighFrequencyFactor = 4, OriginalMaxPositions = 8192 },
            c4.RopeScaling);
        Assert.Equal(c4.RopeScaling, c5.RopeScaling);
        Assert.Equal((500000.0, 131072, true, "llama"), (c4.RopeTheta, c4.MaxSequenceLength, c4.TiedEmbeddings, c4.EffectiveModelType));
        Assert.Equal(c4.RopeTheta, c5.RopeTheta);
    }

    [Fact]
    public void Llama3FrequenciesKeepShortWavelengthsDivideLongOnesAndBlendBetween()
    {
        // Llama 3.1/3.2: theta 500000, D 64, factor 32, low 1, high 4, original 8192: wavelengths below 8192/4 = 2048 stay,
        // above 8192/1 stay divided by 32, in between (original/wavelength - 1)/(4 - 1) of the way back.
        var c = HuggingFaceConfig.Parse(Llama32Json, "config.json");
        var inv = c.Rope!.At(64, 0);
        int blended = 0;
        for (int i = 0; i < 32; i++)
        {
            double plain = Math.Pow(500000, -2.0 * i / 64), wavelength = 2 * Math.PI / plain;
            double expected = wavelength < 2048 ? plain
                : wavelength > 8192 ? plain / 32
                : (1 - (8192 / wavelength - 1) / 3) * plain / 32 + (8192 / wavelength - 1) / 3 * plain;
            if (wavelength >= 2048 && wavelength <= 8192) blended++;
            Assert.True(Math.Abs(inv[i] - expected) <= 1e-15 * expected, $"pair {i}: {inv[i]} against {expected}");
        }
        Assert.True(blended > 0, "no pair fell in the blended band; the test would not see that branch");
        Assert.Equal(1.0, inv[0]);
    }

    [Fact]
    public void Qwen2HasQkvBiasesAndATiedHeadAndMapsItsBiasTensors()
    {
        var c = HuggingFaceConfig.Parse(Qwen25Json, "config.json");
        Assert.Equal((true, false, true, 0, "qwen2", 1000000.0), (c.AttentionBias, c.Bias, c.TiedEmbeddings, c.SlidingWindow, c.EffectiveModelType, c.RopeTheta));
        var names = HuggingFaceWeightMap.For(c).Entries.SelectMany(e => e.Sources.Select(s => s.Name)).ToHashSet();
        Assert.Contains("model.layers.23.self_attn.q_proj.bias", names);
        Assert.Contains("model.layers.0.self_attn.v_proj.bias", names);
        Assert.DoesNotContain("model.layers.0.self_attn.o_proj.bias", names);
        Assert.DoesNotContain("lm_head.weight", names);
    }

    [Fact]
    public void MistralReadsItsSlidingWindow()
    {
        var c = HuggingFaceConfig.Parse(Mistral01Json, "config.json");
        Assert.Equal((4096, false, "mistral"), (c.SlidingWindow, c.AttentionBias, c.EffectiveModelType));
        var none = HuggingFaceConfig.Parse(Mistral01Json.Replace("\"sliding_window\":4096", "\"sliding_window\":null"), "config.json");
        Assert.Equal(0, none.SlidingWindow);
    }

    [Fact]
    public void DynamicScalingAdmitsFactorTimesTheContextAndStartsAtMaxPositionEmbeddings()
    {
        var json = Mistral01Json.Replace("\"model_type\":\"mistral\"", "\"model_type\":\"llama\"").Replace("\"sliding_window\":4096,", "")
            .Replace("\"rope_theta\":10000.0", "\"rope_theta\":10000.0,\"rope_scaling\":{\"rope_type\":\"dynamic\",\"factor\":2.0}");
        var c = HuggingFaceConfig.Parse(json, "config.json");
        Assert.Equal((65536, 32768), (c.MaxSequenceLength, c.OriginalMaxSequenceLength));
        Assert.Equal((2.0, 32768), (c.Rope!.DynamicFactor, c.Rope.DynamicOriginalLength));
        // Written back, max_position_embeddings is the original context again.
        Assert.Contains("\"max_position_embeddings\": 32768", HuggingFaceConfig.ToJson(c));
    }

    [Fact]
    public void YarnDefaultsItsAttentionFactorAsTransformersDoes()
    {
        Assert.Equal(0.1 * Math.Log(4) + 1, new RopeScaling { Type = RopeScalingType.Yarn, Factor = 4 }.YarnAttentionFactor(), 15);
        Assert.Equal(0.7, new RopeScaling { Type = RopeScalingType.Yarn, Factor = 4, AttentionFactor = 0.7 }.YarnAttentionFactor());
        // DeepSeek's mscale ratio: get_mscale(40, 0.707) / get_mscale(40, 1.0).
        double expected = (0.1 * 0.707 * Math.Log(40) + 1) / (0.1 * 1.0 * Math.Log(40) + 1);
        Assert.Equal(expected, new RopeScaling { Type = RopeScalingType.Yarn, Factor = 40, Mscale = 0.707, MscaleAllDim = 1.0 }.YarnAttentionFactor(), 15);
    }

    public static TheoryData<string> Families => new() { Llama32Json, Llama32Json5, Qwen25Json, Mistral01Json };

    [Theory]
    [MemberData(nameof(Families))]
    public void EachFamilyWrittenBackParsesToTheSameConfiguration(string json)
    {
        var c = HuggingFaceConfig.Parse(json, "config.json");
        var back = HuggingFaceConfig.Parse(HuggingFaceConfig.ToJson(c), "config.json");
        Assert.Equal(c, back);
    }

    [Theory]
    [InlineData("\"use_sliding_window\":false", "\"use_sliding_window\":true", "field 'use_sliding_window': true is not supported")]
    [InlineData("\"rope_scaling\":null", "\"rope_scaling\":{\"rope_type\":\"longrope\",\"factor\":2.0}", "field 'rope_scaling.rope_type': 'longrope' is not supported")]
    [InlineData("\"hidden_act\":\"silu\"", "\"hidden_act\":\"gelu\"", "field 'hidden_act': 'gelu' is not supported; qwen2")]
    public void BadQwen2FieldsAreRefusedNamingTheField(string from, string to, string expected)
    {
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(Qwen25Json.Replace(from, to), "q/config.json"));
        Assert.StartsWith("q/config.json: ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void APartialRotaryFactorIsRefused()
    {
        var e = Assert.Throws<HuggingFaceFormatException>(() =>
            HuggingFaceConfig.Parse(Mistral01Json.Replace("\"rope_theta\":10000.0", "\"rope_theta\":10000.0,\"partial_rotary_factor\":0.5"), "config.json"));
        Assert.Contains("field 'partial_rotary_factor'", e.Message);
    }
}
