using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Tessera.Tensors;

namespace Tessera.Cli.CommandLine;

/// <summary>
/// The option vocabulary every command draws from: one name, one meaning, one parser and one validation per concept
/// (--model, --device, --threads, --dtype, --seed, --max-tokens, --batch, --micro, ...), so that a user who learned an
/// option on one command knows it on all. Each call returns a new option (a command owns its options); the validation
/// messages name the option and the value given.
/// </summary>
public static class SharedOptions
{
    /// <summary>--device cpu|cuda|cuda:N.</summary>
    public static Option<Device> Device() => new("--device")
    {
        Description = "where to compute: cpu, cuda (GPU 0) or cuda:N",
        HelpName = "cpu|cuda[:N]",
        DefaultValueFactory = _ => Tessera.Tensors.Device.Cpu,
        CustomParser = result =>
        {
            var text = result.Tokens.Single().Value;
            try { return Tessera.Tensors.Device.Parse(text); }
            catch (Exception e) when (e is ArgumentException or FormatException)
            {
                result.AddError($"--device '{text}': expected cpu, cuda or cuda:N");
                return default;
            }
        },
    };

    /// <summary>--threads N: CPU threads of the CPU backend.</summary>
    public static Option<int> Threads() => AtLeast(new Option<int>("--threads")
    {
        Description = "CPU threads for the CPU backend (default: all cores)",
        HelpName = "N",
        DefaultValueFactory = _ => Environment.ProcessorCount,
    }, 1);

    /// <summary>--dtype among <paramref name="allowed"/> (the first is the default).</summary>
    public static Option<DType> DType(string description, params DType[] allowed)
    {
        var names = allowed.Select(Name).ToArray();
        var option = new Option<DType>("--dtype")
        {
            Description = description,
            HelpName = string.Join('|', names),
            DefaultValueFactory = _ => allowed[0],
            CustomParser = result =>
            {
                var text = result.Tokens.Single().Value;
                int i = Array.IndexOf(names, text.ToLowerInvariant());
                if (i >= 0) return allowed[i];
                result.AddError($"--dtype '{text}': expected {string.Join(", ", names[..^1])} or {names[^1]}");
                return allowed[0];
            },
        };
        option.CompletionSources.Add(names);
        return option;
    }

    /// <summary>--quantize none|int8|fp8|int4: how a model keeps its linear layers' weights.</summary>
    public static Option<Tessera.Nn.Quantization.WeightQuantization> Quantize()
    {
        string[] names = ["none", "int8", "fp8", "int4"];
        var option = new Option<Tessera.Nn.Quantization.WeightQuantization>("--quantize")
        {
            Description = "keep the weight matrices (the draft model's too) a byte a weight with one scale a row, quantized as the " +
                "model loads: int8 (weight-only: products in --dtype), or fp8 (E4M3 weights, and each product quantizes its input's " +
                "rows to E4M3 too: FP8 tensor cores on compute capability 8.9+, a dequantized product elsewhere; bf16/f16/f32 on " +
                "CUDA, f32/f64 on the CPU); or int4 (4 bits a weight, groups of 128 inputs with a scale and zero point each, " +
                "round to nearest; a GPTQ or AWQ checkpoint's own 4-bit weights and groups are kept exactly; embeddings and the LM " +
                "head stay in --dtype); norms and biases stay in --dtype [default: none]",
            HelpName = "none|int8|fp8|int4",
            DefaultValueFactory = _ => Tessera.Nn.Quantization.WeightQuantization.None,
            CustomParser = result =>
            {
                var text = result.Tokens.Single().Value;
                switch (text.ToLowerInvariant())
                {
                    case "none": return Tessera.Nn.Quantization.WeightQuantization.None;
                    case "int8": return Tessera.Nn.Quantization.WeightQuantization.Int8;
                    case "fp8": return Tessera.Nn.Quantization.WeightQuantization.Fp8;
                    case "int4": return Tessera.Nn.Quantization.WeightQuantization.Int4;
                    default:
                        result.AddError($"--quantize '{text}': expected none, int8, fp8 or int4");
                        return Tessera.Nn.Quantization.WeightQuantization.None;
                }
            },
        };
        option.CompletionSources.Add(names);
        return option;
    }

    /// <summary>--kv-dtype model|int8|fp8: what serving's paged KV cache holds (null: the model's dtype; I8: int8 values, F8E4M3:
    /// OCP E4M3 codes, each with a scale per position and head).</summary>
    public static Option<DType?> KvDType()
    {
        string[] names = ["model", "int8", "fp8"];
        var option = new Option<DType?>("--kv-dtype")
        {
            Description = "what the paged KV cache holds: the model's dtype, or int8 values or fp8 (E4M3) codes with one scale per position " +
                "and head (quantized as keys and values are written: ~1.9x the positions in --kv-memory at head size 64 against bf16) [default: model]",
            HelpName = "model|int8|fp8",
            DefaultValueFactory = _ => null,
            CustomParser = result =>
            {
                var text = result.Tokens.Single().Value;
                switch (text.ToLowerInvariant())
                {
                    case "model": return null;
                    case "int8": return Tessera.Tensors.DType.I8;
                    case "fp8": return Tessera.Tensors.DType.F8E4M3;
                    default:
                        result.AddError($"--kv-dtype '{text}': expected model (the model's dtype), int8 or fp8");
                        return null;
                }
            },
        };
        option.CompletionSources.Add(names);
        return option;
    }

    /// <summary>--model: a preset name or a directory (what a directory may be is the command's <paramref name="description"/>).</summary>
    public static Option<string> Model(string description, string? defaultValue = null)
    {
        var option = new Option<string>("--model") { Description = description, HelpName = "PRESET|DIR" };
        if (defaultValue is not null) option.DefaultValueFactory = _ => defaultValue;
        option.CompletionSources.Add(Tessera.Models.ModelPresets.Names.ToArray());
        return option;
    }

    /// <summary>--tokenizer byte|DIR.</summary>
    public static Option<string> Tokenizer(string description, string? defaultValue = "byte")
    {
        var option = new Option<string>("--tokenizer") { Description = description, HelpName = "byte|DIR" };
        if (defaultValue is not null) option.DefaultValueFactory = _ => defaultValue;
        return option;
    }

    /// <summary>--seed N.</summary>
    public static Option<int> Seed(string description, int defaultValue) =>
        new("--seed") { Description = description, HelpName = "N", DefaultValueFactory = _ => defaultValue };

    /// <summary>--max-tokens N: new tokens to generate.</summary>
    public static Option<int> MaxTokens(int defaultValue) => AtLeast(new Option<int>("--max-tokens")
    {
        Description = "new tokens to generate at most (generation also ends where the model's context is full)",
        HelpName = "N",
        DefaultValueFactory = _ => defaultValue,
    }, 1);

    /// <summary>--batch B: rows (sequences) per optimizer update, per rank.</summary>
    public static Option<int> Batch(int defaultValue) => AtLeast(new Option<int>("--batch")
    {
        Description = "rows (sequences) per optimizer update, per rank",
        HelpName = "B",
        DefaultValueFactory = _ => defaultValue,
    }, 1);

    /// <summary>--micro M: rows per micro-batch (gradients of B / M micro-batches are summed before each update).</summary>
    public static Option<int?> Micro() => AtLeast(new Option<int?>("--micro")
    {
        Description = "rows per micro-batch: B / M micro-batches are accumulated per update (M must divide B) [default: B, no accumulation]",
        HelpName = "M",
    }, 1);

    /// <summary>--seq T: tokens per row.</summary>
    public static Option<int?> Sequence(string description) => AtLeast(new Option<int?>("--seq")
    {
        Description = description,
        HelpName = "T",
    }, 1);

    /// <summary>An integer option with a default.</summary>
    public static Option<int> Int(string name, string helpName, string description, int defaultValue, int? min = null)
    {
        var option = new Option<int>(name) { Description = description, HelpName = helpName, DefaultValueFactory = _ => defaultValue };
        return min is int m ? AtLeast(option, m) : option;
    }

    /// <summary>A floating-point option with a default, inside [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static Option<double> Double(string name, string helpName, string description, double defaultValue,
        double min = double.NegativeInfinity, double max = double.PositiveInfinity, bool minExclusive = false)
    {
        var option = new Option<double>(name) { Description = description, HelpName = helpName, DefaultValueFactory = _ => defaultValue };
        option.Validators.Add(result =>
        {
            if (result.Implicit) return;
            double v = result.GetValueOrDefault<double>();
            bool low = minExclusive ? !(v > min) : !(v >= min);
            if (low || !(v <= max) || double.IsNaN(v))
                result.AddError(string.Create(CultureInfo.InvariantCulture, $"{name} ({v}) must lie in {(minExclusive ? "(" : "[")}{min}, {max}]"));
        });
        return option;
    }

    /// <summary>A flag.</summary>
    public static Option<bool> Flag(string name, string description) => new(name) { Description = description };

    /// <summary>Adds a lower bound to an integer option; the error names the option and the value.</summary>
    public static Option<T> AtLeast<T>(Option<T> option, int min)
    {
        option.Validators.Add(result =>
        {
            if (result.Implicit || result.Tokens.Count == 0) return;
            var value = result.GetValueOrDefault<T>();
            if (value is int v && v < min)
                result.AddError($"{option.Name} ({v}) must be at least {min}");
        });
        return option;
    }

    /// <summary>Adds a validator: an integer option given on the command line must be at most <paramref name="max"/>.</summary>
    public static Option<T> AtMost<T>(Option<T> option, int max)
    {
        option.Validators.Add(result =>
        {
            if (result.Implicit || result.Tokens.Count == 0) return;
            var value = result.GetValueOrDefault<T>();
            if (value is int v && v > max)
                result.AddError($"{option.Name} ({v}) must be at most {max}");
        });
        return option;
    }

    /// <summary>Whether the user gave <paramref name="option"/> (rather than taking its default).</summary>
    public static bool Given(this ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };

    private static string Name(Tessera.Tensors.DType d) => d.ToString().ToLowerInvariant();
}
