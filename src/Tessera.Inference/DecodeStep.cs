using Tessera.Models;
using Tessera.Nn.Layers;
using Tessera.Tensors;

namespace Tessera.Inference;

/// <summary>
/// One decoding step of a batch: the tokens in <see cref="Tokens"/> (B, 1) through the model with the KV cache, and,
/// for greedy decoding the argmax of the logits, or with a sampler's options the token drawn on the device
/// (<see cref="IBackend.SampleRows"/> at the cache's positions), written back into <see cref="Tokens"/> for the next step. Every launch
/// reads the position from the cache's device-side positions, so where the backend can record (<see cref="IGraphCapture"/>)
/// the second step is recorded and every later step is one replay: the host's per-op cost leaves the decode loop. Each
/// step promises the backend the longest cache worth promising (<see cref="IInferenceScope.CacheBound"/>), so its kernels
/// suit the cache's length, not its capacity; once the cache passes the recording's bound, the next step records again.
/// </summary>
internal sealed class DecodeStep : IDisposable
{
    private readonly Transformer _model;
    private readonly KvCache _cache;
    private readonly bool _greedy, _record;
    private readonly Tensor? _parameters;                 // (B, TokenSampling.ParameterColumns) I32 when the step draws
    private readonly Sampling.SamplingOptions? _draws;    // the draw's options when it draws (whether a filter applies picks the kernel)
    private ICapturedGraph? _graph;
    private int _graphLongestCache;   // the cache length the recording promised (IInferenceScope.CacheBound)
    private int _longestCache;        // the bound the body's scope promises
    private int _eagerSteps;

    /// <summary>A step over <paramref name="cache"/>; <paramref name="record"/> allows a graph where the backend has them.</summary>
    public DecodeStep(Transformer model, KvCache cache, bool greedy, bool record, Sampling.SamplingOptions? draws = null)
    {
        _model = model;
        _cache = cache;
        _greedy = greedy;
        // A tensor-parallel step waits on its collectives from the host, which a recorded graph cannot contain.
        // A mixture-of-experts step records when every MoE layer routes its B rows on the device; a layer that routes on the
        // host (it reads the router's logits back) cannot be replayed, so such a step runs eagerly.
        _record = record && model.TensorParallelism is null && model.RoutesExpertsOnDevice(cache.Batch);
        var backend = model.Backend;
        Tokens = backend.Allocate(new Shape(cache.Batch, 1), DType.I32);
        if (!greedy && draws is { Temperature: > 0 } o)
        {
            var host = new int[cache.Batch * TokenSampling.ParameterColumns];
            for (int b = 0; b < cache.Batch; b++)
                TokenSampling.WriteParameters(host.AsSpan(b * TokenSampling.ParameterColumns), (float)o.Temperature, o.TopK, (float)o.TopP, o.Seed);
            _parameters = backend.FromHost<int>(host, new Shape(cache.Batch, TokenSampling.ParameterColumns));
            _draws = o;
        }
    }

    /// <summary>Whether the step draws its tokens on the device (a sampler's options were given).</summary>
    public bool Draws => _parameters is not null;

    /// <summary>
    /// Draws the next tokens of <paramref name="logits"/> (B, V) on the device into <see cref="Tokens"/>, at the cache's
    /// positions (the position each token takes); the step must draw (<see cref="Draws"/>).
    /// </summary>
    public void Draw(Tensor logits) =>
        _model.Backend.SampleRows(logits, _parameters ?? throw new InvalidOperationException("DecodeStep.Draw: the step was built without a sampler's options"),
            _cache.Positions, Tokens.Reshape(logits.Size(0)), _draws!.TemperatureOnly(logits.Size(1)));

    /// <summary>(B, 1) I32: the step's input tokens; after a greedy step, the tokens it chose.</summary>
    public Tensor Tokens { get; }

    /// <summary>(B, V) logits of the last step (a view of the model's pooled buffer, the same every step).</summary>
    public Tensor? Logits { get; private set; }

    /// <summary>Whether later steps replay a recorded graph.</summary>
    public bool Recorded => _graph is not null;

    /// <summary>Graphs recorded so far (again each time the cache passed the previous recording's bound).</summary>
    public int Recordings { get; private set; }

    /// <summary>Enqueues one step; the cache advances by one position.</summary>
    public void Run()
    {
        // A recording promised the backend caches of at most its bound; past it, the next step records again.
        if (_graph is not null && _cache.Length + 1 > _graphLongestCache)
        {
            _graph.Dispose();
            _graph = null;
        }
        if (_graph is not null)
        {
            _cache.EnsureRoom(1);
            _graph.Replay();
            _cache.AdvanceReplayed(1);
            return;
        }
        // The longest cache worth promising: the backend's kernel choices hold up to it.
        _longestCache = (_model.Backend as IInferenceScope)?.CacheBound(Math.Min(_cache.Length + 1, _cache.MaxSequence), _cache.MaxSequence) ?? _cache.MaxSequence;
        // The first step runs normally so that every buffer, kernel module and product plan exists before recording.
        if (_record && _eagerSteps > 0 && _model.Backend is IGraphCapture capture)
        {
            _cache.EnsureRoom(1);
            _graph = capture.Capture(Body);   // host bookkeeping (the cache's Length) ran once while recording
            if (_graph is not null)
            {
                _graphLongestCache = _longestCache;
                Recordings++;
                _graph.Replay();
                return;
            }
        }
        Body();
        _eagerSteps++;
    }

    private void Body()
    {
        // Nothing a decode step enqueues writes a weight: the backend may overlap weight loads with the kernel in front.
        using var scope = (_model.Backend as IInferenceScope)?.EnterInference(_longestCache);
        var logits = _model.ForwardWithCache(Tokens, _cache, validateTokens: false);   // (B, 1, Vpad)
        int b = logits.Size(0), vPad = logits.Size(2);
        Logits = logits.Reshape(b, vPad).Slice(1, 0, _model.Config.VocabSize);
        if (_greedy) _model.Backend.ArgMax(Logits, Tokens.Reshape(b));
        else if (_parameters is not null) Draw(Logits);       // the cache has advanced: its positions are the drawn tokens'
    }

    public void Dispose()
    {
        _graph?.Dispose();
        _graph = null;
        Tokens.Storage.Dispose();
        _parameters?.Storage.Dispose();
    }
}
