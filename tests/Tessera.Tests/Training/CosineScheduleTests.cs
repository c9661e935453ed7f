using Tessera.Training.Optim;
using Xunit;

namespace Tessera.Tests.Training;

public class CosineScheduleTests
{
    [Fact]
    public void WarmsUpLinearlyThenDecaysToTheFloor()
    {
        var s = new CosineSchedule(1e-3, 1e-4, WarmupSteps: 10, TotalSteps: 110);
        Assert.Equal(1e-4, s.At(0), 15);            // (0+1)/10 of the peak
        Assert.Equal(1e-3, s.At(9), 15);            // end of warmup
        Assert.Equal(1e-3, s.At(10), 15);           // cosine starts at the peak
        Assert.Equal(5.5e-4, s.At(60), 12);         // half way: the mean of peak and floor
        Assert.Equal(1e-4, s.At(110), 15);          // floor at the end
        for (int i = 11; i <= 110; i++) Assert.True(s.At(i) <= s.At(i - 1));
    }
}
