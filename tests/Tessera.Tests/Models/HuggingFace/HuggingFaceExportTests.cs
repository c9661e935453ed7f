using System.Text.Json.Nodes;
using Tessera.Inference;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.HuggingFace;

/// <summary>
/// The complete Hugging Face export: every family round-trips through its own directory (Tessera reloads the same logits),
/// weights shard with an index above the size limit, the dtype follows the model, tokenizer and generation files come
/// along, bad input writes nothing; and transformers itself loads each export and gives Tessera's logits and greedy
/// tokens (scripts/golden/check_export.py, where Python with transformers is installed: the GPU machine).
/// </summary>
public sealed class HuggingFaceExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-export-").FullName;
    private readonly CpuBackend _cpu = new(2);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    public static TheoryData<string> Families => DebugFamilies.Each;

    /// <summary>A model with O(0.3) random weights, so logits depend on every parameter.</summary>
    private Model RandomModel(TransformerConfig config, DType dtype, int seed)
    {
        var model = new Model(config, _cpu, dtype);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));
        return model;
    }

    private Tensor Tokens(TransformerConfig config, int b, int t, int seed)
    {
        var rng = new Random(seed);
        return _cpu.FromArray(Enumerable.Range(0, b * t).Select(_ => rng.Next(config.VocabSize)).ToArray(), b, t);
    }

    private double[] Logits(Model model, Tensor tokens)
    {
        var logits = model.Forward(tokens, 0);
        model.ReleaseActivations(0);
        return TestTensors.ToDoubles(_cpu, _cpu.Contiguous(logits.Slice(2, 0, model.Config.VocabSize)));
    }

    [Theory]
    [MemberData(nameof(Families))]
    [InlineData("llama-headsize-debug")]   // head_dim 16 written and read back; o_proj 48 x 64
    [InlineData("qwen3-debug")]            // q_norm and k_norm, Qwen3ForCausalLM
    [InlineData("mixtral-debug")]          // block_sparse_moe.gate and experts.{j}.w1/w2/w3, MixtralForCausalLM
    [InlineData("qwen3-moe-debug")]        // mlp.gate and mlp.experts.{j}.*_proj, moe_intermediate_size, Qwen3MoeForCausalLM
    [InlineData("qwen2-moe-debug")]        // and mlp.shared_expert.*_proj, mlp.shared_expert_gate, q/k/v biases, Qwen2MoeForCausalLM
    [InlineData("gemma2-debug")]           // four norms a block written as w = scale - 1, Gemma2ForCausalLM
    [InlineData("gemma3-debug")]           // and q_norm, k_norm, rope_local_base_freq, layer_types
    [InlineData("phi3-debug")]             // qkv_proj and gate_up_proj written fused, Phi3ForCausalLM
    [InlineData("phi4-mini-debug")]        // partial_rotary_factor, rope_scaling longrope with its factors, tied
    public void EachFamilyReloadsFromItsExportWithTheSameConfigurationAndLogits(string preset)
    {
        var config = ModelPresets.Get(preset);
        var model = RandomModel(config, DType.F64, 5);
        var dir = Path.Combine(_dir, preset);
        HuggingFaceExport.Write(dir, model);
        var back = PretrainedModel.Load(dir, _cpu, DType.F64);
        Assert.Equal(config with { ModelType = config.EffectiveModelType, PaddedVocabSize = 0, Hidden = config.EffectiveHidden, KvHeads = config.EffectiveKvHeads },
            back.Config with { ModelType = back.Config.EffectiveModelType, PaddedVocabSize = 0, Hidden = back.Config.EffectiveHidden, KvHeads = back.Config.EffectiveKvHeads });
        var tokens = Tokens(config, 2, 12, 6);
        // The export rounds the F64 weights to F32: logits agree to F32 rounding carried through two layers.
        NumericAssert.Close(Logits(model, tokens), Logits(back, tokens), 1e-5, $"{preset} logits after export");
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal("float32", json["torch_dtype"]!.GetValue<string>());
    }

    [Fact]
    public void WeightsAboveTheShardLimitAreSplitWithAnIndexThatListsEveryTensorOnce()
    {
        var config = ModelPresets.Get("qwen2-debug");
        var model = RandomModel(config, DType.F32, 7);
        var dir = Path.Combine(_dir, "sharded");
        HuggingFaceExport.Write(dir, model, new HuggingFaceExportOptions { MaxShardBytes = 20_000 });
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "model.safetensors.index.json")))!;
        var weightMap = index["weight_map"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<string>());
        var files = weightMap.Values.Distinct().Order().ToList();
        Assert.True(files.Count > 2, $"expected several shards, got {files.Count}");
        Assert.Equal(files, Enumerable.Range(1, files.Count).Select(i => $"model-{i:D5}-of-{files.Count:D5}.safetensors"));
        Assert.False(File.Exists(Path.Combine(dir, "model.safetensors")));
        long total = 0;
        var seen = new HashSet<string>();
        foreach (var f in files)
        {
            using var st = SafetensorsFile.Open(Path.Combine(dir, f));
            foreach (var t in st.Tensors)
            {
                Assert.True(seen.Add(t.Name), $"{t.Name} is stored twice");
                Assert.Equal(f, weightMap[t.Name]);
                total += t.Shape.NumElements * 4;
            }
            Assert.True(new FileInfo(Path.Combine(dir, f)).Length <= 20_000 + 4096, $"{f} passes the limit by more than its header");
        }
        Assert.Equal(weightMap.Keys.Order(), seen.Order());
        Assert.Equal(total, index["metadata"]!["total_size"]!.GetValue<long>());
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        var tokens = Tokens(config, 1, 8, 8);
        NumericAssert.Close(Logits(model, tokens), Logits(back, tokens), 0, "sharded reload (F32 both ways: exact)");
    }

    [Fact]
    public void Bf16ExportStoresBf16TensorsAndSaysSo()
    {
        var config = ModelPresets.Get("llama3-debug");
        var model = RandomModel(config, DType.F32, 9);
        var dir = Path.Combine(_dir, "bf16");
        HuggingFaceExport.Write(dir, model, new HuggingFaceExportOptions { DType = DType.BF16 });
        using (var st = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors")))
            Assert.All(st.Tensors, t => Assert.Equal(DType.BF16, t.DType));
        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!["torch_dtype"]!.GetValue<string>());
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        var original = model.Parameters.Parameters.ToDictionary(p => p.Name, p => _cpu.ToArray<float>(p.Value));
        foreach (var p in back.Parameters.Parameters)
        {
            var expected = Array.ConvertAll(original[p.Name], f => BFloat16.FromSingle(f).ToSingle());
            Assert.Equal(expected, _cpu.ToArray<float>(p.Value));   // round to nearest even, once
        }
    }

    [Fact]
    public void TokenizerAndGenerationFilesComeAlongAndTheByteTokenizerGetsAnEquivalentTokenizerJson()
    {
        var config = ModelPresets.Get("gpt2-tiny");
        var model = RandomModel(config, DType.F32, 11);
        var dir = Path.Combine(_dir, "bytes");
        HuggingFaceExport.Write(dir, model, new HuggingFaceExportOptions { Tokenizer = new ByteTokenizer() });
        var tok = TokenizerLoader.FromDirectory(dir);
        var bytes = new ByteTokenizer();
        foreach (var text in new[] { "Hello, world!", "  tabs\tand\nnewlines ", "café 日本語 🙂" })
        {
            Assert.Equal(bytes.Encode(text), tok.Encode(text));
            Assert.Equal(text, tok.Decode(tok.Encode(text)));
        }

        // A tokenizer directory's files are copied; its generation ids reach generation_config.json and config.json.
        var source = Path.Combine(_dir, "tok-src");
        Directory.CreateDirectory(source);
        File.WriteAllText(Path.Combine(source, "tokenizer_config.json"), "{\"eos_token\": null}");
        File.WriteAllText(Path.Combine(source, "generation_config.json"), "{\"bos_token_id\": 1, \"eos_token_id\": [2, 7]}");
        var dir2 = Path.Combine(_dir, "with-tokenizer");
        HuggingFaceExport.Write(dir2, model, new HuggingFaceExportOptions { TokenizerDirectory = source });
        Assert.True(File.Exists(Path.Combine(dir2, "tokenizer_config.json")));
        var generation = GenerationDefaults.Load(dir2);
        Assert.Equal(1, generation.BosTokenId);
        Assert.Equal([2, 7], generation.EosTokenIds);
        var configJson = JsonNode.Parse(File.ReadAllText(Path.Combine(dir2, "config.json")))!;
        Assert.Equal(new[] { 2, 7 }, configJson["eos_token_id"]!.AsArray().Select(n => n!.GetValue<int>()));
    }

    [Fact]
    public void BadExportsWriteNothing()
    {
        var config = ModelPresets.Get("gpt2-debug");       // 96 tokens
        var model = RandomModel(config, DType.F32, 12);
        var target = Path.Combine(_dir, "refused");
        var e = Assert.Throws<TokenizerFormatException>(() => HuggingFaceExport.Write(target, model, new HuggingFaceExportOptions { Tokenizer = new ByteTokenizer() }));
        Assert.Contains("the tokenizer has 256 tokens", e.Message);
        Assert.False(Directory.Exists(target));
        var a = Assert.Throws<ArgumentException>(() => HuggingFaceExport.Write(target, model, new HuggingFaceExportOptions { DType = DType.I32 }));
        Assert.Contains("HuggingFaceExportOptions.DType", a.Message);
        Assert.False(Directory.Exists(target));

        var occupied = Path.Combine(_dir, "occupied");
        Directory.CreateDirectory(occupied);
        File.WriteAllText(Path.Combine(occupied, "notes.txt"), "mine");
        var io = Assert.Throws<IOException>(() => HuggingFaceExport.Write(occupied, model));
        Assert.Contains("exists and is not empty", io.Message);
        Assert.Equal(["notes.txt"], Directory.GetFiles(occupied).Select(Path.GetFileName));
        Assert.Empty(Directory.GetDirectories(_dir, ".occupied.tmp-*"));
    }

    /// <summary>
    /// transformers loads every family's export and computes Tessera's logits (1e-4, F32 both sides) and greedy tokens.
    /// Needs python3 with torch and transformers (the GPU machine has them); skipped, with the reason, elsewhere.
    /// </summary>
    [Fact]
    public void TransformersLoadsEachExportAndGivesTheSameLogitsAndGreedyTokens()
    {
        string? missing = PythonProcess.Missing("torch", "transformers", "safetensors");
        if (missing is not null) Assert.Skip($"transformers round trip not run: {missing}");
        var dirs = new List<string>();
        int seed = 20;
        foreach (var preset in new[] { "gpt2-debug", "llama-debug", "llama3-debug", "qwen2-debug", "mistral-debug", "qwen3-debug",
                     "mixtral-debug", "qwen3-moe-debug", "qwen2-moe-debug", "gemma2-debug", "gemma3-debug", "phi3-debug", "phi4-mini-debug" })
        {
            var config = ModelPresets.Get(preset);
            var model = RandomModel(config, DType.F32, seed++);
            var dir = Path.Combine(_dir, "hf-" + preset);
            HuggingFaceExport.Write(dir, model);
            // Past Mistral's window of 5 and the Gemma presets' local window of 8; phi4-mini-debug past its original 16 (long factors).
            int t = preset switch { "mistral-debug" => 16, "phi4-mini-debug" => 20, _ => 12 };
            var tokens = Tokens(config, 2, t, seed++);
            var logits = Logits(model, tokens);
            int[] prompt = [5, 17, 42, 73, 90];
            // phi4-mini-debug generates past its original context of 16, where TextGenerator recomputes the sequence once with the
            // long factors (as transformers 4's Phi3ForCausalLM did); transformers 5.17's generate keeps its cache there, so the
            // check compares these tokens with its greedy tokens taken without a cache (check_export.py says why).
            var greedy = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = preset == "phi4-mini-debug" ? 18 : 10 }).ToArray();
            var writer = new SafetensorsWriter();
            writer.Add("tokens", DType.I32, tokens.Shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(_cpu.ToArray<int>(tokens).AsSpan()).ToArray());
            writer.Add("logits", new Shape(2, t, config.VocabSize), Array.ConvertAll(logits, x => (float)x));
            writer.Add("generate_prompt", DType.I32, new Shape(prompt.Length), System.Runtime.InteropServices.MemoryMarshal.AsBytes(prompt.AsSpan()).ToArray());
            writer.Add("generate_tokens", DType.I32, new Shape(greedy.Length), System.Runtime.InteropServices.MemoryMarshal.AsBytes(greedy.AsSpan()).ToArray());
            writer.Write(Path.Combine(dir, "tessera_reference.safetensors"));
            dirs.Add(dir);
        }
        var (code, output) = PythonProcess.Run([Path.Combine(AppContext.BaseDirectory, "Golden", "check_export.py"), .. dirs]);
        TestContext.Current.TestOutputHelper?.WriteLine(output);
        Assert.True(code == 0, "transformers disagrees with an export:\n" + output);
    }
}
