using System.Globalization;
using System.Text;
using Tessera.Inference.Serving;

namespace Tessera.Server;

/// <summary>Renders the engine's and the server's counters in Prometheus' text exposition format (version 0.0.4).</summary>
public static class PrometheusText
{
    /// <summary>The text of GET /metrics.</summary>
    public static string Render(EngineMetrics m, IReadOnlyDictionary<int, long> responsesByStatus)
    {
        var sb = new StringBuilder();
        Counter(sb, "tessera_requests_total", "Requests by outcome.", [("outcome=\"finished\"", m.RequestsFinished),
            ("outcome=\"cancelled\"", m.RequestsCancelled), ("outcome=\"rejected\"", m.RequestsRejected)]);
        Counter(sb, "tessera_prompt_tokens_total", "Prompt tokens of accepted requests.", [("", m.PromptTokens)]);
        Counter(sb, "tessera_prompt_tokens_cached_total", "Prompt tokens whose keys and values came from the prefix cache.", [("", m.CachedPromptTokens)]);
        Counter(sb, "tessera_generation_tokens_total", "Generated tokens.", [("", m.GeneratedTokens)]);
        Counter(sb, "tessera_engine_steps_total", "Engine steps (one forward pass of the running batch each).", [("", m.Steps)]);
        Counter(sb, "tessera_preemptions_total", "Sequences preempted for KV blocks (recomputed later).", [("", m.Preemptions)]);
        Counter(sb, "tessera_spec_decode_draft_tokens_total", "Draft tokens verified by speculative decoding.", [("", m.DraftTokens)]);
        Counter(sb, "tessera_spec_decode_accepted_tokens_total", "Draft tokens the model agreed with (tokens gained).", [("", m.AcceptedDraftTokens)]);
        Counter(sb, "tessera_constrained_requests_total", "Requests constrained to a JSON grammar (response_format, forced tool calls).", [("", m.ConstrainedRequests)]);
        Counter(sb, "tessera_constrained_documents_total", "Constrained choices that ended with a whole JSON document.", [("", m.WholeDocuments)]);
        Counter(sb, "tessera_http_responses_total", "HTTP responses by status code.",
            responsesByStatus.OrderBy(kv => kv.Key).Select(kv => ($"code=\"{kv.Key}\"", kv.Value)).ToArray());
        Gauge(sb, "tessera_requests_running", "Sequences in the running batch.", m.Running);
        Gauge(sb, "tessera_requests_waiting", "Sequences waiting for the batch.", m.Waiting);
        Gauge(sb, "tessera_kv_blocks_in_use", "KV-cache blocks referenced by a sequence.", m.KvBlocksInUse);
        Gauge(sb, "tessera_kv_blocks_total", "KV-cache blocks in the pool.", m.KvBlocksTotal);
        Histogram(sb, "tessera_time_to_first_token_seconds", "Seconds from a request's arrival to its first token.", m.TimeToFirstToken);
        Histogram(sb, "tessera_inter_token_latency_seconds", "Seconds between consecutive tokens of a choice.", m.InterTokenLatency);
        return sb.ToString();
    }

    private static void Counter(StringBuilder sb, string name, string help, (string Labels, long Value)[] samples)
    {
        sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
        sb.Append("# TYPE ").Append(name).Append(" counter\n");
        foreach (var (labels, value) in samples)
            sb.Append(name).Append(labels.Length > 0 ? "{" + labels + "}" : "").Append(' ').Append(value.ToString(CultureInfo.InvariantCulture)).Append('\n');
    }

    private static void Gauge(StringBuilder sb, string name, string help, long value)
    {
        sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
        sb.Append("# TYPE ").Append(name).Append(" gauge\n");
        sb.Append(name).Append(' ').Append(value.ToString(CultureInfo.InvariantCulture)).Append('\n');
    }

    private static void Histogram(StringBuilder sb, string name, string help, LatencyHistogram histogram)
    {
        var (cumulative, count, sum) = histogram.Snapshot();
        sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
        sb.Append("# TYPE ").Append(name).Append(" histogram\n");
        for (int i = 0; i < cumulative.Length; i++)
            sb.Append(name).Append("_bucket{le=\"").Append(histogram.Bounds[i].ToString("R", CultureInfo.InvariantCulture)).Append("\"} ")
              .Append(cumulative[i].ToString(CultureInfo.InvariantCulture)).Append('\n');
        sb.Append(name).Append("_bucket{le=\"+Inf\"} ").Append(count.ToString(CultureInfo.InvariantCulture)).Append('\n');
        sb.Append(name).Append("_sum ").Append(sum.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
        sb.Append(name).Append("_count ").Append(count.ToString(CultureInfo.InvariantCulture)).Append('\n');
    }
}
