using System.Text.Json;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models;

/// <summary>
/// A head size D given apart from the width (<see cref="TransformerConfig.ExplicitHeadSize"/>, Hugging Face's head_dim):
/// its JSON, its validation, config.json's head_dim, and the parameter shapes it gives.
/// </summary>
public class HeadSizeConfigTests
{
    private static readonly TransformerConfig Wide = ModelPresets.Get("llama-headsize-debug");

    [Fact]
    public void ADerivedHeadSizeLeavesTheJsonAsItWasAndAnExplicitOneRoundTrips()
    {
        var plain = ModelPresets.Get("llama-debug");
        string json = JsonSerializer.Serialize(plain);
        Assert.DoesNotContain(nameof(TransformerConfig.ExplicitHeadSize), json);   // old checkpoints and new ones of old models read the same
        Assert.Equal(8, JsonSerializer.Deserialize<TransformerConfig>(json)!.HeadSize);

        string wide = JsonSerializer.Serialize(Wide);
        Assert.Contains("\"ExplicitHeadSize\":16", wide);
        var back = JsonSerializer.Deserialize<TransformerConfig>(wide)!;
        Assert.Equal(Wide, back);
        Assert.Equal(16, back.HeadSize);
    }

    [Fact]
    public void ValidationNamesTheHeadSizeWhenItIsNegativeOrOddUnderRope()
    {
        var negative = Assert.Throws<ArgumentException>(() => (Wide with { ExplicitHeadSize = -2 }).Validate());
        Assert.Contains("ExplicitHeadSize (-2)", negative.Message);
        var odd = Assert.Throws<ArgumentException>(() => (Wide with { ExplicitHeadSize = 15 }).Validate());
        Assert.Contains("even head size, got 15", odd.Message);
        // Heads need not divide the width once the head size is given: 48 channels, 5 heads of 16.
        Assert.Equal(16, (Wide with { Heads = 5, KvHeads = 5 }).Validate().HeadSize);
        Assert.Throws<ArgumentException>(() => (Wide with { Heads = 5, KvHeads = 5, ExplicitHeadSize = 0 }).Validate());
    }

    [Fact]
    public void ParametersTakeTheHeadSizeNotTheWidth()
    {
        var model = new Model(Wide, new CpuBackend(1), DType.F32);
        var shapes = model.Parameters.Parameters.ToDictionary(p => p.Name, p => p.Value.Shape);
        Assert.Equal(new Shape((4 + 2 * 2) * 16, 48), shapes["blocks.0.attn.qkv.weight"]);   // ((H + 2K) D, C)
        Assert.Equal(new Shape(48, 4 * 16), shapes["blocks.0.attn.proj.weight"]);           // (C, H D)
        Assert.Equal(16, model.CreateKvCache(1, 8).HeadSize);
    }

    [Fact]
    public void ConfigJsonHeadDimIsReadAndWrittenBack()
    {
        const string json = """
            {"architectures":["MistralForCausalLM"],"model_type":"mistral","vocab_size":131072,"max_position_embeddings":1024000,
             "hidden_size":5120,"intermediate_size":14336,"num_hidden_layers":40,"num_attention_heads":32,"num_key_value_heads":8,
             "head_dim":128,"hidden_act":"silu","rms_norm_eps":1e-05,"rope_theta":1000000.0,"sliding_window":null,
             "tie_word_embeddings":false}
            """;
        var c = HuggingFaceConfig.Parse(json, "config.json");   // Mistral Nemo: 5120 / 32 = 160, but heads of 128
        Assert.Equal((128, 128), (c.ExplicitHeadSize, c.HeadSize));
        var again = HuggingFaceConfig.Parse(HuggingFaceConfig.ToJson(c), "config.json");
        Assert.Equal(128, again.HeadSize);
        // head_dim equal to hidden_size / heads, or absent, keeps the derived head size.
        var derived = HuggingFaceConfig.Parse(json.Replace("\"head_dim\":128", "\"head_dim\":160"), "config.json");
        Assert.Equal((0, 160), (derived.ExplicitHeadSize, derived.HeadSize));
        var absent = HuggingFaceConfig.Parse(json.Replace("\"head_dim\":128,", ""), "config.json");
        Assert.Equal((0, 160), (absent.ExplicitHeadSize, absent.HeadSize));
    }

    [Fact]
    public void Gpt2ExportRefusesAnExplicitHeadSize()
    {
        var gpt2 = ModelPresets.Get("gpt2-debug") with { ExplicitHeadSize = 16 };   // 4 heads of 16 over 32 channels
        var e = Assert.Throws<ArgumentException>(() => HuggingFaceConfig.ToJson(gpt2));
        Assert.Contains("head_dim", e.Message);
    }
}
