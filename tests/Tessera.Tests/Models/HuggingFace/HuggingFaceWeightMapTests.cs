using System.Text.Json;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Models.HuggingFace;

public sealed class HuggingFaceWeightMapTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-hf-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly TransformerConfig Gpt2 = ModelPresets.Get("gpt2-debug") with { PaddedVocabSize = 128 };
    private static readonly TransformerConfig Llama = ModelPresets.Get("llama-debug");

    /// <summary>Random Hugging Face tensors with the shapes the map expects (fresh values, never zeros).</summary>
    private static Dictionary<string, HostTensor> RandomHf(TransformerConfig config, int seed)
    {
        var rng = new Random(seed);
        var result = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        foreach (var e in HuggingFaceWeightMap.For(config).Entries)
            foreach (var (name, shape) in e.Sources)
                result[name] = new HostTensor(shape, Enumerable.Range(0, (int)shape.NumElements).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray());
        return result;
    }

    [Fact]
    public void Gpt2Conv1DWeightsAreTransposedAndVocabRowsPaddedWithZeros()
    {
        var hf = RandomHf(Gpt2, 1);
        var canonical = HuggingFaceWeightMap.For(Gpt2).ToCanonical(hf);
        int c = Gpt2.Embedding;
        var cAttn = hf["transformer.h.1.attn.c_attn.weight"].Data;   // (C, 3C), Conv1D (in, out)
        var qkv = canonical["blocks.1.attn.qkv.weight"];               // (3C, C), Linear (out, in)
        Assert.Equal(new Shape(3 * c, c), qkv.Shape);
        for (int o = 0; o < 3 * c; o++)
            for (int i = 0; i < c; i++)
                Assert.Equal(cAttn[i * 3 * c + o], qkv.Data[o * c + i]);
        var wte = hf["transformer.wte.weight"].Data;
        var tok = canonical["tok_emb.weight"];
        Assert.Equal(new Shape(128, c), tok.Shape);
        Assert.Equal(wte, tok.Data.Take(96 * c));
        Assert.All(tok.Data.Skip(96 * c), x => Assert.Equal(0f, x));
        Assert.Equal(hf["transformer.h.0.ln_2.bias"].Data, canonical["blocks.0.norm2.bias"].Data);
        Assert.False(canonical.ContainsKey("lm_head.weight"));
    }

    [Fact]
    public void LlamaQueryKeyValueProjectionsAreStackedByRowsInThatOrder()
    {
        var hf = RandomHf(Llama, 2);
        var canonical = HuggingFaceWeightMap.For(Llama).ToCanonical(hf);
        var qkv = canonical["blocks.0.attn.qkv.weight"];
        int c = Llama.Embedding, d = Llama.HeadSize, h = Llama.Heads, k = Llama.EffectiveKvHeads;
        Assert.Equal(new Shape((h + 2 * k) * d, c), qkv.Shape);
        var expected = hf["model.layers.0.self_attn.q_proj.weight"].Data
            .Concat(hf["model.layers.0.self_attn.k_proj.weight"].Data)
            .Concat(hf["model.layers.0.self_attn.v_proj.weight"].Data);
        Assert.Equal(expected, qkv.Data);
        Assert.Equal(hf["model.layers.1.mlp.down_proj.weight"].Data, canonical["blocks.1.mlp.proj.weight"].Data);
        Assert.Equal(hf["lm_head.weight"].Data, canonical["lm_head.weight"].Data.Take(Llama.VocabSize * c));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void HuggingFaceToCanonicalAndBackIsExact(string family)
    {
        var config = family == "gpt2" ? Gpt2 : Llama;
        var map = HuggingFaceWeightMap.For(config);
        var hf = RandomHf(config, 3);
        var back = map.ToHuggingFace(map.ToCanonical(hf));
        Assert.Equal(hf.Keys.Order(), back.Keys.Order());
        foreach (var (name, t) in hf)
        {
            Assert.Equal(t.Shape, back[name].Shape);
            Assert.Equal(t.Data, back[name].Data);
        }
    }

    [Fact]
    public void Gpt2NamesWithoutTransformerPrefixAndMaskBuffersLoad()
    {
        var hf = RandomHf(Gpt2, 4).ToDictionary(kv => kv.Key.StartsWith("transformer.") ? kv.Key["transformer.".Length..] : kv.Key, kv => kv.Value);
        hf["h.0.attn.bias"] = new HostTensor(new Shape(1, 1, 4, 4), new float[16]);
        hf["transformer.h.1.attn.masked_bias"] = new HostTensor(new Shape(), new float[1]);
        hf["lm_head.weight"] = hf["wte.weight"]; // a tied head saved anyway is ignored
        var canonical = HuggingFaceWeightMap.For(Gpt2).ToCanonical(hf);
        Assert.Equal(hf["h.1.mlp.c_fc.bias"].Data, canonical["blocks.1.mlp.fc.bias"].Data);
    }

    [Fact]
    public void MissingTensorIsRejectedNamingIt()
    {
        var hf = RandomHf(Llama, 5);
        hf.Remove("model.layers.1.self_attn.k_proj.weight");
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceWeightMap.For(Llama).ToCanonical(hf, "model.safetensors"));
        Assert.Contains("model.safetensors: tensor 'model.layers.1.self_attn.k_proj.weight' (for Tessera parameter 'blocks.1.attn.qkv.weight') is missing", e.Message);
    }

    [Fact]
    public void UnexpectedTensorIsRejectedNamingIt()
    {
        var hf = RandomHf(Llama, 6);
        hf["model.layers.2.input_layernorm.weight"] = hf["model.layers.0.input_layernorm.weight"];
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceWeightMap.For(Llama).ToCanonical(hf, "model.safetensors"));
        Assert.Contains("unexpected tensor 'model.layers.2.input_layernorm.weight'", e.Message);
    }

    [Fact]
    public void ShapeMismatchIsRejectedNamingTensorAndBothShapes()
    {
        var hf = RandomHf(Gpt2, 7);
        hf["transformer.h.0.mlp.c_fc.weight"] = new HostTensor(new Shape(128, 32), new float[128 * 32]);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceWeightMap.For(Gpt2).ToCanonical(hf, "model.safetensors"));
        Assert.Contains("tensor 'transformer.h.0.mlp.c_fc.weight' has shape (128, 32), but the configuration implies (32, 128)", e.Message);
    }

    private static ParameterArena Arena(TransformerConfig config, DType dtype)
    {
        var parameters = new ParameterLayoutBuilder();
        foreach (var e in HuggingFaceWeightMap.For(config).Entries) parameters.Declare(e.Canonical, e.Shape, e.Shape.Rank == 2);
        return new ParameterArena(parameters.Build(), new CpuBackend(), dtype);
    }

    [Theory]
    [InlineData("gpt2", DType.F32)]
    [InlineData("llama", DType.F64)]
    public void ExportedDirectoryLoadsBackIntoParametersExactly(string family, DType dtype)
    {
        var config = family == "gpt2" ? Gpt2 : Llama;
        var map = HuggingFaceWeightMap.For(config);
        var canonical = map.ToCanonical(RandomHf(config, 8));
        var source = Arena(config, dtype);
        var backend = source.Backend;
        foreach (var p in source.Parameters)
        {
            if (dtype == DType.F32) backend.CopyFromHost<float>(canonical[p.Name].Data, p.Value);
            else backend.CopyFromHost<double>(Array.ConvertAll(canonical[p.Name].Data, x => (double)x), p.Value);
        }
        string dir = Path.Combine(_dir, family);
        HuggingFaceModelDirectory.Export(dir, config, source.Parameters, backend);

        using (var st = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors")))
        {
            Assert.Equal("pt", st.Metadata["format"]);
            Assert.All(st.Tensors, t => Assert.Equal(DType.F32, t.DType));
            Assert.Equal(config.TiedEmbeddings, !st.Contains("lm_head.weight"));
            Assert.Equal(config.VocabSize, st.Tensors.First(t => t.Name.EndsWith("wte.weight") || t.Name.EndsWith("embed_tokens.weight")).Shape[0]);
        }

        using var model = HuggingFaceModelDirectory.Open(dir, paddedVocabMultiple: family == "gpt2" ? 64 : 1);
        Assert.Equal(config.EffectivePaddedVocab, model.Config.EffectivePaddedVocab);
        var target = Arena(model.Config, dtype);
        model.LoadInto(target.Parameters, target.Backend);
        foreach (var p in target.Parameters)
        {
            // F32 data through F32 or F64 parameters is exact: compare with equality.
            var got = new double[p.NumElements];
            if (dtype == DType.F32) { var f = new float[p.NumElements]; target.Backend.CopyToHost<float>(p.Value, f); got = Array.ConvertAll(f, x => (double)x); }
            else target.Backend.CopyToHost<double>(p.Value, got);
            Assert.Equal(canonical[p.Name].Data.Select(x => (double)x), got);
        }
    }

    [Fact]
    public void ParameterSetThatDiffersFromTheMapIsRejectedBeforeAnyCopy()
    {
        string dir = Path.Combine(_dir, "m");
        HuggingFaceModelDirectory.Export(dir, Llama, HuggingFaceWeightMap.For(Llama).ToCanonical(RandomHf(Llama, 9)));
        using var model = HuggingFaceModelDirectory.Open(dir);
        var parameters = new ParameterLayoutBuilder();
        foreach (var e in model.Map.Entries.Skip(1)) parameters.Declare(e.Canonical, e.Shape, false);
        var arena = new ParameterArena(parameters.Build(), new CpuBackend(), DType.F32);
        var e1 = Assert.Throws<ArgumentException>(() => model.LoadInto(arena.Parameters, arena.Backend));
        Assert.Contains("no parameter 'tok_emb.weight'", e1.Message);
    }

    private void WriteShards(string dir, Dictionary<string, HostTensor> hf, Func<string, string> shardOf, Dictionary<string, string>? indexOverride = null)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), HuggingFaceConfig.ToJson(Llama));
        foreach (var group in hf.GroupBy(kv => shardOf(kv.Key)))
        {
            var w = new SafetensorsWriter();
            foreach (var (name, t) in group) w.Add(name, t.Shape, t.Data);
            w.Write(Path.Combine(dir, group.Key));
        }
        var weightMap = indexOverride ?? hf.Keys.ToDictionary(k => k, shardOf);
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"),
            JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = weightMap }));
    }

    private static string TwoShards(string name) => name.Contains("layers.1.") ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";

    [Fact]
    public void ShardedWeightsLoadThroughTheIndex()
    {
        var hf = RandomHf(Llama, 10);
        string dir = Path.Combine(_dir, "sharded");
        WriteShards(dir, hf, TwoShards);
        using var model = HuggingFaceModelDirectory.Open(dir);
        Assert.Equal(hf["model.layers.1.mlp.up_proj.weight"].Data, model.ReadCanonical("blocks.1.mlp.up.weight").Data);
    }

    [Fact]
    public void IndexListingAMissingShardIsRejected()
    {
        var hf = RandomHf(Llama, 11);
        string dir = Path.Combine(_dir, "noshard");
        WriteShards(dir, hf, TwoShards);
        File.Delete(Path.Combine(dir, "model-00002-of-00002.safetensors"));
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceModelDirectory.Open(dir).Dispose());
        Assert.Contains("model.safetensors.index.json: shard 'model-00002-of-00002.safetensors' is listed but does not exist", e.Message);
    }

    [Fact]
    public void IndexListingATensorItsShardLacksIsRejected()
    {
        var hf = RandomHf(Llama, 12);
        string dir = Path.Combine(_dir, "badindex");
        var index = hf.Keys.ToDictionary(k => k, TwoShards);
        index["model.norm.weight"] = "model-00002-of-00002.safetensors";
        WriteShards(dir, hf, TwoShards, index);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceModelDirectory.Open(dir).Dispose());
        Assert.Contains("'model.norm.weight'", e.Message);
    }
}
