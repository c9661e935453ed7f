using System.Diagnostics;

namespace Tessera.Tests.Support;

/// <summary>Runs python3 for the tests that compare against Hugging Face's own libraries (installed on the GPU machine).</summary>
public static class PythonProcess
{
    /// <summary>Why python3 cannot import <paramref name="modules"/> here (the reason a test skips with), or null when it can.</summary>
    public static string? Missing(params string[] modules)
    {
        try
        {
            var (code, output) = Run(["-c", "import " + string.Join(", ", modules)]);
            return code == 0 ? null : $"python3 cannot import {string.Join(", ", modules)}: " + output.Trim().Split('\n')[^1];
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "no python3 on this machine";
        }
    }

    /// <summary>Runs python3 with <paramref name="args"/> (at most 300 s) and returns its exit code and its stdout then stderr.</summary>
    public static (int Code, string Output) Run(IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(entireProcessTree: true); return (-1, "python3 timed out after 300 s"); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }
}
