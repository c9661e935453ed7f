using System.Buffers.Binary;
using System.Text;
using Tessera.Models.Safetensors;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Models.Safetensors;

public sealed class SafetensorsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-st-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string PathOf(string name) => Path.Combine(_dir, name);

    /// <summary>Writes a file from a literal header and data region, the way a malformed file would be laid out.</summary>
    private string WriteRaw(string header, byte[] data, ulong? declaredLength = null, string name = "bad.safetensors")
    {
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredLength ?? (ulong)h.Length);
        h.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + h.Length);
        var path = PathOf(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static SafetensorsFormatException Rejects(string path)
    {
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(Path.GetFileName(path), e.Message);
        return e;
    }

    [Fact]
    public void RoundTripPreservesEveryDTypeShapeValueAndMetadata()
    {
        var rng = new Random(1);
        var f32 = Enumerable.Range(0, 12).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var f64 = Enumerable.Range(0, 5).Select(_ => rng.NextDouble() - 0.5).ToArray();
        var bf16 = Enumerable.Range(0, 6).Select(_ => BFloat16.FromSingle((float)rng.NextDouble() * 4 - 2)).ToArray();
        var f16 = Enumerable.Range(0, 4).Select(_ => (Half)(rng.NextDouble() * 8 - 4)).ToArray();
        var w = new SafetensorsWriter();
        w.Add("b.weight", new Shape(3, 4), f32);
        w.Add("a.scalar", new Shape(5), f64);
        w.Add("c.bf16", DType.BF16, new Shape(2, 3), bf16.SelectMany(b => BitConverter.GetBytes(b.Bits)).ToArray());
        w.Add("d.f16", DType.F16, new Shape(2, 2), f16.SelectMany(h => BitConverter.GetBytes(h)).ToArray());
        w.Add("e.empty", new Shape(0, 7), Array.Empty<float>());
        w.Metadata["format"] = "pt";
        var path = PathOf("rt.safetensors");
        w.Write(path);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(new Shape(3, 4), file["b.weight"].Shape);
        Assert.Equal(f32, file.ReadAsSingle("b.weight"));
        Assert.Equal(f64, file.ReadAsDouble("a.scalar"));
        // BF16 and F16 widen to float exactly, so equality is exact.
        Assert.Equal(bf16.Select(b => b.ToSingle()), file.ReadAsSingle("c.bf16"));
        Assert.Equal(f16.Select(h => (double)h), file.ReadAsDouble("d.f16"));
        Assert.Empty(file.ReadAsSingle("e.empty"));
        Assert.Equal(f32.Select(x => (double)x), file.ReadAsDouble("b.weight"));
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp-*"));
    }

    /// <summary>
    /// A tensor of more than 2 GiB (2^30 + 5 BF16 values, as a typed array) is written whole, and a small I8 tensor laid out
    /// after it starts past 2 GiB: both read back exactly (each value its index modulo 251, an integer BF16 holds exactly, so
    /// a slice written twice, dropped or shifted shows), at the start, across the writer's 64 MiB slices and at the end.
    /// Until 2026-12-06 the writer copied every tensor into one byte array, which cannot hold 2 GiB: a training checkpoint
    /// of a model with a 151,936 x 3,584 token table in F32 could not be written.
    /// </summary>
    [Fact]
    public void TensorsOfMoreThanTwoGibibytesAreWrittenWhole()
    {
        int n = (1 << 30) + 5;
        var big = new BFloat16[n];
        System.Threading.Tasks.Parallel.For(0, (n + (1 << 22) - 1) >> 22, c =>
        {
            for (int i = c << 22, end = Math.Min(n, (c + 1) << 22); i < end; i++) big[i] = BFloat16.FromSingle(i % 251);
        });
        var path = PathOf("big.safetensors");
        var w = new SafetensorsWriter();
        w.Add("big", DType.BF16, new Shape(n), big);
        w.Add("tail", DType.I8, new Shape(3), new byte[] { 7, 8, 9 });
        w.Write(path);
        big = null;
        try
        {
            using var file = SafetensorsFile.Open(path);
            Assert.Equal(2L * n, file["big"].ByteLength);
            Assert.Equal([7, 8, 9], file.ReadBytes("tail"));
            const int slice = 32 << 20;                                  // BF16 values in one 64 MiB slice
            (long Start, long Length)[] runs = [(0, 1000), (slice - 500, 1000), (n / 2, 17), (n - 1000, 1000)];
            var got = new float[runs.Sum(r => (int)r.Length)];
            file.ReadAsSingle("big", runs, got);
            var expected = runs.SelectMany(r => Enumerable.Range(0, (int)r.Length).Select(j => (float)((r.Start + j) % 251))).ToArray();
            Assert.Equal(expected, got);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Typed values must be the dtype's own (BF16 values are not F16, floats not I32); bytes are any dtype's raw form.</summary>
    [Fact]
    public void TypedValuesOfAnotherDTypeAreRefused()
    {
        var w = new SafetensorsWriter();
        Assert.Contains("cannot be written as F16", Assert.Throws<ArgumentException>(() => w.Add("a", DType.F16, new Shape(2), new BFloat16[2])).Message);
        Assert.Contains("cannot be written as I32", Assert.Throws<ArgumentException>(() => w.Add("b", DType.I32, new Shape(2), new float[2])).Message);
        w.Add("c", DType.I32, new Shape(2), new byte[8]);
        w.Add("d", DType.BF16, new Shape(2), new ushort[2]);
        Assert.Equal(2, w.Count);
    }

    /// <summary>
    /// Every float dtype read as floats and as doubles gives the C# casts bit for bit (exact equality of bits, no tolerance:
    /// the readers are those casts), on edge values: signed zeros, infinities, NaN, subnormals, extremes, and doubles that
    /// round to float (ties to even included).
    /// </summary>
    [Fact]
    public void EveryFloatDTypeReadsAsSingleAndDoubleBitForBitAsTheCasts()
    {
        double[] f64 = [0.0, -0.0, double.PositiveInfinity, double.NegativeInfinity, double.NaN, double.Epsilon, double.MaxValue,
            1e-40, 3e38, 4e38, 1 + Math.Pow(2, -24), 1 + 3 * Math.Pow(2, -24), 1 + Math.Pow(2, -30), -0.1, Math.PI];
        float[] f32 = [0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, float.Epsilon, float.MaxValue, 1e-40f, -0.1f, MathF.PI];
        Half[] f16 = [(Half)0, (Half)(-0.0), Half.PositiveInfinity, Half.NegativeInfinity, Half.NaN, Half.Epsilon, Half.MaxValue, (Half)(-0.1), (Half)3.14];
        BFloat16[] bf16 = f32.Select(BFloat16.FromSingle).ToArray();
        var w = new SafetensorsWriter();
        w.Add("f64", new Shape(f64.Length), f64);
        w.Add("f32", new Shape(f32.Length), f32);
        w.Add("f16", DType.F16, new Shape(f16.Length), f16.SelectMany(h => BitConverter.GetBytes(h)).ToArray());
        w.Add("bf16", DType.BF16, new Shape(bf16.Length), bf16.SelectMany(b => BitConverter.GetBytes(b.Bits)).ToArray());
        var path = PathOf("casts.safetensors");
        w.Write(path);

        using var file = SafetensorsFile.Open(path);
        static void Bits<T>(IEnumerable<T> expected, T[] actual, Func<T, long> bits) =>
            Assert.Equal(expected.Select(bits), actual.Select(bits));
        Bits(f64.Select(x => (float)x), file.ReadAsSingle("f64"), x => BitConverter.SingleToInt32Bits(x));
        Bits(f64, file.ReadAsDouble("f64"), BitConverter.DoubleToInt64Bits);
        Bits(f32, file.ReadAsSingle("f32"), x => BitConverter.SingleToInt32Bits(x));
        Bits(f32.Select(x => (double)x), file.ReadAsDouble("f32"), BitConverter.DoubleToInt64Bits);
        Bits(f16.Select(x => (float)x), file.ReadAsSingle("f16"), x => BitConverter.SingleToInt32Bits(x));
        Bits(f16.Select(x => (double)x), file.ReadAsDouble("f16"), BitConverter.DoubleToInt64Bits);
        Bits(bf16.Select(x => x.ToSingle()), file.ReadAsSingle("bf16"), x => BitConverter.SingleToInt32Bits(x));
        Bits(bf16.Select(x => (double)x.ToSingle()), file.ReadAsDouble("bf16"), BitConverter.DoubleToInt64Bits);
    }

    [Fact]
    public void WriterSortsByDescendingDTypeThenNameAndPadsHeaderToEightBytes()
    {
        var w = new SafetensorsWriter();
        w.Add("z", new Shape(1), new float[] { 1 });
        w.Add("a", new Shape(1), new float[] { 2 });
        w.Add("m", new Shape(1), new double[] { 3 });
        w.Add("b", DType.BF16, new Shape(1), new byte[2]);
        var path = PathOf("order.safetensors");
        w.Write(path);
        var bytes = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, n % 8);
        Assert.Equal(' ', (char)bytes[8 + n - 1]);
        using var file = SafetensorsFile.Open(path);
        Assert.Equal(new[] { "m", "a", "z", "b" }, file.Tensors.Select(t => t.Name));
        Assert.Equal(new long[] { 0, 8, 12, 16 }, file.Tensors.Select(t => t.Begin));
    }

    [Fact]
    public void FailedWriteLeavesExistingFileUntouchedAndNoTemporary()
    {
        var path = PathOf("keep.safetensors");
        new SafetensorsWriter().Add("x", new Shape(2), new float[] { 1, 2 }).Write(path);
        var before = File.ReadAllBytes(path);
        // A directory in the target's place makes the final rename fail after the temporary was written.
        var blocked = PathOf("dir.safetensors");
        Directory.CreateDirectory(blocked);
        var w = new SafetensorsWriter().Add("y", new Shape(1), new float[] { 3 });
        Assert.ThrowsAny<Exception>(() => w.Write(blocked));
        Assert.True(Directory.Exists(blocked));
        // Invalid tensors are rejected before anything touches the disk.
        Assert.Throws<ArgumentException>(() => new SafetensorsWriter().Add("x", DType.F32, new Shape(3), new byte[8]));
        Assert.Throws<ArgumentException>(() => new SafetensorsWriter().Add("x", new Shape(1), new float[] { 1 }).Add("x", new Shape(1), new float[] { 1 }));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp-*"));
    }

    [Fact]
    public void HeaderLengthOverLimitIsRejected() =>
        Assert.Contains("exceeds the limit", Rejects(WriteRaw("{}", [], declaredLength: 100_000_001)).Message);

    [Fact]
    public void HeaderLongerThanFileIsRejected() =>
        Assert.Contains("past the end of the file", Rejects(WriteRaw("{}", [], declaredLength: 64)).Message);

    [Fact]
    public void FileShorterThanEightBytesIsRejected()
    {
        var path = PathOf("tiny.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);
        Assert.Contains("fewer than the 8-byte", Rejects(path).Message);
    }

    [Fact]
    public void InvalidUtf8HeaderIsRejected()
    {
        var path = PathOf("utf8.safetensors");
        var h = new byte[] { (byte)'{', (byte)'"', 0xC3, 0x28, (byte)'"', (byte)':', (byte)'1', (byte)'}' };
        var bytes = new byte[8 + h.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)h.Length);
        h.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        Assert.Contains("not valid UTF-8", Rejects(path).Message);
    }

    [Fact]
    public void InvalidJsonIsRejected() => Assert.Contains("not valid JSON", Rejects(WriteRaw("{\"a\": {", [])).Message);

    [Fact]
    public void NonObjectHeaderIsRejected() => Assert.Contains("not a JSON object", Rejects(WriteRaw("[1, 2]  ", [])).Message);

    [Fact]
    public void UnknownDTypeIsRejected() =>
        Assert.Contains("unknown or unsupported dtype 'Q7'",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}", new byte[4])).Message);

    [Fact]
    public void NegativeShapeIsRejected() =>
        Assert.Contains("shape entry -2",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", new byte[8])).Message);

    [Fact]
    public void NonIntegerShapeIsRejected() =>
        Assert.Contains("shape entry 1.5",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", new byte[4])).Message);

    [Fact]
    public void ByteSizeMismatchIsRejected() =>
        Assert.Contains("hold 8 bytes but F32 (3) needs 12",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", new byte[8])).Message);

    [Fact]
    public void ShapeWhoseByteCountOverflowsIsRejected() =>
        Assert.Contains("overflows",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F64\",\"shape\":[2147483647,2147483647,2147483647],\"data_offsets\":[0,8]}}", new byte[8])).Message);

    [Fact]
    public void OffsetsNotStartingAtZeroAreRejected() =>
        Assert.Contains("leaves a hole",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", new byte[8])).Message);

    [Fact]
    public void HoleBetweenTensorsIsRejected() =>
        Assert.Contains("tensor 'b' data [8, 12) leaves a hole",
            Rejects(WriteRaw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", new byte[12])).Message);

    [Fact]
    public void OverlappingTensorsAreRejected() =>
        Assert.Contains("overlaps the previous tensor",
            Rejects(WriteRaw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", new byte[8])).Message);

    [Fact]
    public void OutOfOrderButContiguousOffsetsAreAccepted()
    {
        using var file = SafetensorsFile.Open(WriteRaw(
            "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            BitConverter.GetBytes(1.5f).Concat(BitConverter.GetBytes(-2.5f)).ToArray()));
        Assert.Equal(-2.5f, file.ReadAsSingle("b")[0]);
        Assert.Equal(1.5f, file.ReadAsSingle("a")[0]);
    }

    [Fact]
    public void TrailingBytesAreRejected() =>
        Assert.Contains("4 trailing bytes",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", new byte[8])).Message);

    [Fact]
    public void TruncatedDataIsRejected() =>
        Assert.Contains("truncated",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[4])).Message);

    [Fact]
    public void DuplicateTensorNameIsRejected() =>
        Assert.Contains("key 'w' twice",
            Rejects(WriteRaw("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", new byte[8])).Message);

    [Fact]
    public void NonStringMetadataIsRejected() =>
        Assert.Contains("must be a string",
            Rejects(WriteRaw("{\"__metadata__\":{\"format\":3}}", [])).Message);
}
