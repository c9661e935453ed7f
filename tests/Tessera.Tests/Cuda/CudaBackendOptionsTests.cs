using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The CUDA backend's options record and its one-string form (what the CLI's TESSERA_CUDA_OPTIONS and the benches'
/// --cuda-options carry): every setting parses and round-trips, bad settings are refused naming the setting, the value and
/// what is accepted, and the backend validates its options before it touches the driver (so these run without a GPU).
/// </summary>
public sealed class CudaBackendOptionsTests
{
    /// <summary>Every property away from its default: Parse must reach each of them.</summary>
    private static readonly CudaBackendOptions EverySettingChanged = new()
    {
        MatrixVectorKernels = false,
        MatrixVectorCtasPerSm = 1,
        EarlyWeightLoads = false,
        FusedDecodeAttentionOutput = true,
        HopperDecodeProducts = false,
        DecodeProductTensorMaps = true,
        HopperTrainingProducts = false,
        HopperTrainingProductColumns = 128,
        HopperTrainingProductMulticast = false,
        HopperTrainingProductStagedStores = false,
        HopperTrainingProductOverlappedEpilogue = true,
        TimeHopperTrainingProducts = false,
        QuantizedDecodeProducts = false,
        DecodeAttention = DecodeAttentionKernel.PerQueryHead,
        CrossEntropyThreadsPerRow = 512,
        CrossEntropyStagedBytes = null,
        CrossEntropyClusterCtas = 0,
        CrossEntropyClusterVectors = 4,
        SamplingClusterCtas = 4,
        CrossEntropyClusterMinRowBytes = 0,
        FusedBiasGradient = true,
        FusedGeluBiasGradient = true,
        FusedAttentionBiasGradient = true,
        LayerNormSumsInRegisters = true,
        MatMulHeuristicCandidates = 32,
        MatMulSearchMaxRows = 100000,
        PagedDecodeStagedTable = false,
        TuneMatMulAlgorithms = false,
        MatMulSearch = MatMulCandidateSearch.SplitK,
        ProgrammaticDependentLaunch = false,
        SpecializedPagedAttention = false,
        HopperAttention = !CudaBackendOptions.Default.HopperAttention,
        HopperAttentionBackwardTensorMaps = !CudaBackendOptions.Default.HopperAttentionBackwardTensorMaps,
        HopperAttentionForwardTensorMaps = !CudaBackendOptions.Default.HopperAttentionForwardTensorMaps,
        HopperAttentionForwardWarpSpecialized = !CudaBackendOptions.Default.HopperAttentionForwardWarpSpecialized,
        HopperAttentionBackward = !CudaBackendOptions.Default.HopperAttentionBackward,
        HopperAttentionWarpgroups = 1,
        HopperBackwardVariant = 3,
        FusedPagedQkv = false,
        RopeAppendRowKernelMaxRows = 512,
        DecodeProducts = true,
        Int4DecodeProductGroupSums = false,
        Int4DecodeProductStages = 8,
        Int4DecodeProductXTiles = 2,
        QuantizedDecodeProductCtasPerSm = 4,
        QuantizedDecodeProductNormMaxRows = 16,
        MoeExpertTensorCores = false,
        PagedDecodeMinKeysPerSplit = 1,
        PagedDecodeBatchedMerge = false,
        PagedDecodeTiled = true,
        PagedDecodeTensorCores = !CudaBackendOptions.Default.PagedDecodeTensorCores,
        PagedDecodeSplitSpan = 16,
        PagedDecodeCtasPerSm = 2,
        ProfileOps = true,
        KernelCacheFolder = "/tmp/tessera kernels",
    };

    [Fact]
    public void BlankTextGivesTheDefaultsAndTheDefaultsFormatAsNothing()
    {
        Assert.Equal(CudaBackendOptions.Default, CudaBackendOptions.Parse(null));
        Assert.Equal(CudaBackendOptions.Default, CudaBackendOptions.Parse("  "));
        Assert.Equal("", CudaBackendOptions.Default.Format());
        Assert.Equal("", new CudaBackendOptions().Format());
    }

    [Fact]
    public void EverySettingParsesAndFormatRoundTrips()
    {
        string text = EverySettingChanged.Format();
        foreach (var property in typeof(CudaBackendOptions).GetProperties().Where(p => p.CanWrite))
            Assert.Contains(property.Name + "=", text);   // a property Format forgets would not survive a bench's log line
        Assert.Equal(EverySettingChanged, CudaBackendOptions.Parse(text));
    }

    [Fact]
    public void NamesIgnoreCaseAndBooleansTakeTheirUsualSpellings()
    {
        var options = CudaBackendOptions.Parse(" matrixvectorkernels = off , PROFILEOPS=1, decodeattention=grouped, CrossEntropyThreadsPerRow=auto ");
        Assert.False(options.MatrixVectorKernels);
        Assert.True(options.ProfileOps);
        Assert.Equal(DecodeAttentionKernel.Grouped, options.DecodeAttention);
        Assert.Null(options.CrossEntropyThreadsPerRow);
        Assert.Equal(CudaBackendOptions.Default with { MatrixVectorKernels = false, ProfileOps = true, DecodeAttention = DecodeAttentionKernel.Grouped }, options);
    }

    [Theory]
    [InlineData("HopperTrainingProductColumns=64", "HopperTrainingProductColumns (64) must be 128 or 256")]
    [InlineData("MatrixVectorCtasPerSm=3", "MatrixVectorCtasPerSm (3) must be 1 or 2")]
    [InlineData("HopperAttentionWarpgroups=3", "HopperAttentionWarpgroups (3) must be 1 or 2, or 0 for the measured best")]
    [InlineData("PagedDecodeCtasPerSm=33", "PagedDecodeCtasPerSm (33) must be 1 to 32, or 0 for the kernel's occupancy")]
    [InlineData("PagedDecodeCtasPerSm=-1", "PagedDecodeCtasPerSm (-1) must be 1 to 32, or 0 for the kernel's occupancy")]
    [InlineData("PagedDecodeMinKeysPerSplit=0", "PagedDecodeMinKeysPerSplit (0) must be at least 1")]
    [InlineData("PagedDecodeSplitSpan=0", "PagedDecodeSplitSpan (0) must be at least 1")]
    [InlineData("RopeAppendRowKernelMaxRows=-1", "RopeAppendRowKernelMaxRows (-1) must be 0 (never) or positive")]
    [InlineData("MatMulHeuristicCandidates=65", "MatMulHeuristicCandidates (65) must be 1 to 64")]
    [InlineData("MatMulSearchMaxRows=0", "MatMulSearchMaxRows (0) must be at least 1")]
    [InlineData("HopperBackwardVariant=11", "HopperBackwardVariant (11) must be 1 to 10, or 0 for the measured best")]
    [InlineData("CrossEntropyThreadsPerRow=300", "CrossEntropyThreadsPerRow (300) must be 128, 256, 512 or 1024")]
    [InlineData("CrossEntropyClusterCtas=3", "CrossEntropyClusterCtas (3) must be 2, 4 or 8 CTAs a row, or 0")]
    [InlineData("SamplingClusterCtas=3", "SamplingClusterCtas (3) must be 1, 2, 4 or 8 CTAs a row, 0")]
    [InlineData("Int4DecodeProductStages=6", "Int4DecodeProductStages (6) must be 4 or 8")]
    [InlineData("Int4DecodeProductXTiles=3", "Int4DecodeProductXTiles (3) must be 1, 2 or 4")]
    [InlineData("QuantizedDecodeProductCtasPerSm=3", "QuantizedDecodeProductCtasPerSm (3) must be 1, 2 or 4")]
    [InlineData("QuantizedDecodeProductNormMaxRows=65", "QuantizedDecodeProductNormMaxRows (65) must be 0 to 64")]
    [InlineData("CrossEntropyClusterMinRowBytes=-1", "CrossEntropyClusterMinRowBytes (-1) must be 0 or positive")]
    [InlineData("CrossEntropyClusterVectors=16", "CrossEntropyClusterVectors (16) must be 4 or 8 vectors a thread")]
    [InlineData("CrossEntropyStagedBytes=-16", "CrossEntropyStagedBytes (-16) must be 0 (off) or positive")]
    [InlineData("TuneMatMulAlgorithms=maybe", "'TuneMatMulAlgorithms=maybe': expected true or false")]
    [InlineData("MoeExpertTensorCores=2", "'MoeExpertTensorCores=2': expected true or false")]
    [InlineData("DecodeAttention=1", "'DecodeAttention=1': expected one of Automatic, Grouped, PerQueryHead")]
    [InlineData("MatMulSearch=everything", "'MatMulSearch=everything': expected one of Heuristic, SplitK, AllAlgorithms")]
    [InlineData("MatrixVectorCtasPerSm=two", "'MatrixVectorCtasPerSm=two': expected an integer")]
    [InlineData("Gemv=false", "unknown setting 'Gemv'")]
    [InlineData("ProfileOps", "'ProfileOps' is not Name=value")]
    [InlineData("KernelCacheFolder=", "'KernelCacheFolder=': the folder is empty")]
    public void BadSettingsAreRefusedNamingTheSettingAndWhatIsAccepted(string text, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => CudaBackendOptions.Parse(text));
        Assert.Contains(expected, e.Message);
        if (expected.StartsWith("unknown", StringComparison.Ordinal) || expected.EndsWith("Name=value", StringComparison.Ordinal))
            Assert.Contains("MatrixVectorKernels", e.Message);   // the accepted names are listed
    }

    [Fact]
    public void TheBackendValidatesItsOptionsBeforeOpeningTheDevice()
    {
        // Runs on machines without a driver: the options are refused before CudaDevice.Open could fail for another reason.
        var e = Assert.Throws<ArgumentException>(() => new CudaBackend(0, new CudaBackendOptions { MatrixVectorCtasPerSm = 0 }));
        Assert.Contains("MatrixVectorCtasPerSm (0)", e.Message);
        e = Assert.Throws<ArgumentException>(() => new CudaBackend(0, new CudaBackendOptions { DecodeAttention = (DecodeAttentionKernel)7 }));
        Assert.Contains("DecodeAttention (7)", e.Message);
        e = Assert.Throws<ArgumentException>(() => new CudaBackend(0, new CudaBackendOptions { KernelCacheFolder = " " }));
        Assert.Contains("KernelCacheFolder", e.Message);
    }
}

/// <summary>
/// Options are per backend, not per process: a second backend on the same GPU with other options behaves by its own,
/// while the shared one keeps the defaults (this also runs two backends on one device side by side: own streams,
/// allocators, kernel modules and cuBLASLt handles over the one primary context).
/// </summary>
[Collection("cuda")]
public sealed class CudaBackendOptionsOnDeviceTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Fact]
    public void ASecondBackendWithOtherOptionsKeepsThemWhileTheFirstKeepsTheDefaults()
    {
        Assert.Equal(CudaBackendOptions.Default, Gpu.Options);
        using var other = new CudaBackend(Gpu.CudaDevice.Ordinal, new CudaBackendOptions { EarlyWeightLoads = false, MatrixVectorKernels = false });
        var (x, xv) = Random(DType.BF16, 1, 1, 1024);
        var (w, wv) = Random(DType.BF16, 0.1, 768, 1024);
        var viaGemv = Poisoned(DType.BF16, 1, 768);

        // The same product on the other backend, whose options send it to cuBLASLt, on its own stream and memory.
        var ox = other.Allocate(new Shape(1, 1024), DType.BF16);
        var ow = other.Allocate(new Shape(768, 1024), DType.BF16);
        other.CopyFromHost<BFloat16>(xv.Select(v => BFloat16.FromSingle((float)v)).ToArray(), ox);
        other.CopyFromHost<BFloat16>(wv.Select(v => BFloat16.FromSingle((float)v)).ToArray(), ow);
        var viaCublas = other.Allocate(new Shape(1, 768), DType.BF16);
        using (other.EnterInference())
        using (Gpu.EnterInference())
        {
            // A launch inside each scope first: early loads are allowed only after one (InferenceScopeReadsWeightsEarly...).
            other.Fill(viaCublas, double.NaN);
            Gpu.Fill(viaGemv, double.NaN);
            Assert.False(other.EarlyWeights);   // its options turn early loads off
            Assert.True(Gpu.EarlyWeights);      // the shared backend's defaults keep them on
            other.MatMul(ox, ow, viaCublas, transposeB: true);
            Gpu.MatMul(x, w, viaGemv, transposeB: true);
        }
        var expected = new double[768];
        for (int j = 0; j < 768; j++)
            for (int k = 0; k < 1024; k++) expected[j] += xv[k] * wv[j * 1024 + k];
        // bf16 outputs of fp32 sums over 1024 terms: the 2^-9 output rounding dominates (Tolerance(BF16) = 1e-2).
        AssertClose(expected, Download(viaGemv), Tolerance(DType.BF16), "matrix-vector kernel (shared backend, defaults)");
        AssertClose(expected, other.ToArray<BFloat16>(viaCublas).Select(v => (double)v.ToSingle()).ToArray(), Tolerance(DType.BF16),
            "cuBLASLt (second backend, MatrixVectorKernels=false)");
    }
}
