// Shared by the emulation check programs: the failure count (each program's exit code) and the error measure and report
// line that most of their checks use.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>

static int failures = 0;

// The largest |actual - expected| (infinite where an actual value is not finite) and the largest |expected| over n values,
// those with include[i] == 0 left out when include is given.
struct EmulationErrors
{
    double difference = 0, scale = 0;
    // difference over scale (over 1 where every expected value is 0)
    double relative() const { return difference / (scale > 0 ? scale : 1); }
};
static EmulationErrors errors_of(const double* expected, const float* actual, size_t n, const char* include = nullptr)
{
    EmulationErrors r;
    for (size_t i = 0; i < n; i++)
    {
        if (include && !include[i]) continue;
        if (!std::isfinite(actual[i])) { r.difference = INFINITY; break; }
        r.difference = std::max(r.difference, std::abs(actual[i] - expected[i]));
        r.scale = std::max(r.scale, std::abs(expected[i]));
    }
    return r;
}

// Prints "what" padded to width, "label error", `extra`, then ok or FAIL (ok when error <= tol: NaN and infinity fail),
// and counts a failure. Returns whether it passed.
static bool report_error(const char* what, int width, double error, double tol, const char* label = "rel err", const char* extra = "")
{
    const bool ok = error <= tol;
    printf("%-*s %s %.3e%s %s\n", width, what, label, error, extra, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    return ok;
}
