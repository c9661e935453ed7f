using System.Text.Json;
using Tessera.Models;
using Tessera.Training.Checkpoints;
using Xunit;

namespace Tessera.Tests.Training;

/// <summary>trainer_state.json keeps every family setting, so a checkpoint resumes the model it saved.</summary>
public sealed class TrainerStateFamilyTests
{
    [Theory]
    [InlineData("llama3-debug")]
    [InlineData("qwen2-debug")]
    [InlineData("mistral-debug")]
    [InlineData("phi3-debug")]
    [InlineData("phi4-mini-debug")]   // PartialRotaryFactor, LongRoPE's factor lists
    public void FamilySettingsSurviveTheStateFile(string preset)
    {
        var config = ModelPresets.Get(preset) with
        {
            RopeScaling = preset == "mistral-debug" ? new RopeScaling { Type = RopeScalingType.Yarn, Factor = 2, OriginalMaxPositions = 32, Mscale = 0.7, MscaleAllDim = 1 }
                : ModelPresets.Get(preset).RopeScaling,
        };
        var state = new TrainerState { Model = config };
        var back = JsonSerializer.Deserialize<TrainerState>(JsonSerializer.Serialize(state))!;
        Assert.Equal(config, back.Model);
    }

    [Fact]
    public void SettingsAtTheirDefaultsAreLeftOutOfTheJson()
    {
        var json = JsonSerializer.Serialize(ModelPresets.Get("phi3-debug"));
        Assert.DoesNotContain("PartialRotaryFactor", json);
        var rope = JsonSerializer.Serialize(ModelPresets.Get("llama3-debug").RopeScaling);
        Assert.DoesNotContain("ShortFactor", rope);
        Assert.DoesNotContain("LongFactor", rope);
    }
}
