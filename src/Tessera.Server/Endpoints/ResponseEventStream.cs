using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
using Tessera.Inference.Tools;
using Tessera.Server.Contracts;

namespace Tessera.Server.Endpoints;

/// <summary>
/// A streamed response as the Responses API's server-sent events (each "event: TYPE" and "data: {type, sequence_number, ...}",
/// no [DONE] line: the stream ends after the last event): response.created and response.in_progress; for the message,
/// output_item.added, content_part.added, output_text.delta per piece of text, output_text.done, content_part.done and
/// output_item.done; for each function call output_item.added (name known, arguments ""), function_call_arguments.delta per
/// piece, function_call_arguments.done and output_item.done; then response.completed, or response.incomplete when
/// max_output_tokens cut it. With tools the text goes through chat's <see cref="ToolCallStreamReader"/>, so the pieces of a
/// call's arguments join into the arguments the whole response gives.
/// </summary>
internal sealed class ResponseEventStream(HttpContext context, ResponseBody response, ToolCallStreamReader? reader)
{
    private readonly List<ResponseOutputItem> _output = [];
    private readonly Dictionary<int, StreamedCall> _calls = [];       // by the reader's call index
    private readonly string _messageId = "msg_" + Guid.NewGuid().ToString("N");
    private readonly StringBuilder _text = new();
    private int _sequence;
    private int _messageIndex = -1;                 // the message's output index once opened

    /// <summary>A function call being streamed: its output index and item id, its call id and name, the arguments sent so far.</summary>
    private sealed record StreamedCall(int OutputIndex, string ItemId, string CallId, string Name)
    {
        public StringBuilder Arguments { get; } = new();
    }

    /// <summary>Streams the response; returns it as finished (null when the client went away first).</summary>
    public async Task<ResponseBody?> RunAsync(ChannelReader<CompletionEvent> events)
    {
        EngineCalls.BeginStream(context);
        await SendAsync(new ResponseStreamEvent("response.created", 0) { Response = response }).ConfigureAwait(false);
        await SendAsync(new ResponseStreamEvent("response.in_progress", 0) { Response = response }).ConfigureAwait(false);
        FinishReason? reason = null;
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } usage) return await FinishAsync(reason, usage).ConfigureAwait(false);
            if (e.FinishReason is { } r) reason = r;
            if (reader is null)
            {
                if (e.Text.Length > 0) await TextAsync(e.Text).ConfigureAwait(false);
                continue;
            }
            IEnumerable<ToolCallStreamEvent> found = e.Text.Length > 0 ? reader.Append(e.Text) : [];
            if (e.FinishReason is not null) found = found.Concat(reader.Finish());
            foreach (var f in found) await ToolEventAsync(f).ConfigureAwait(false);
        }
        return null;
    }

    private async Task ToolEventAsync(ToolCallStreamEvent found)
    {
        switch (found.Kind)
        {
            case ToolCallStreamEventKind.Content:
                await TextAsync(found.Text).ConfigureAwait(false);
                break;
            case ToolCallStreamEventKind.CallStarted:
                var call = new StreamedCall(_output.Count, "fc_" + Guid.NewGuid().ToString("N"), found.Id!, found.Name!);
                _calls[found.Index] = call;
                var item = ResponsesEndpoint.FunctionCall(call.CallId, call.Name, "", "in_progress", call.ItemId);
                _output.Add(item);
                await SendAsync(new ResponseStreamEvent("response.output_item.added", 0) { OutputIndex = call.OutputIndex, Item = item }).ConfigureAwait(false);
                break;
            case ToolCallStreamEventKind.Arguments:
                var streamed = _calls[found.Index];
                streamed.Arguments.Append(found.Text);
                await SendAsync(new ResponseStreamEvent("response.function_call_arguments.delta", 0)
                {
                    ItemId = streamed.ItemId, OutputIndex = streamed.OutputIndex, Delta = found.Text,
                }).ConfigureAwait(false);
                break;
        }
    }

    private async Task TextAsync(string text)
    {
        if (_messageIndex < 0) await OpenMessageAsync().ConfigureAwait(false);
        _text.Append(text);
        await SendAsync(new ResponseStreamEvent("response.output_text.delta", 0)
        {
            ItemId = _messageId, OutputIndex = _messageIndex, ContentIndex = 0, Delta = text, Logprobs = [],
        }).ConfigureAwait(false);
    }

    private async Task OpenMessageAsync()
    {
        _messageIndex = _output.Count;
        var item = new ResponseOutputItem("message", _messageId, "in_progress", "assistant", []);
        _output.Add(item);
        await SendAsync(new ResponseStreamEvent("response.output_item.added", 0) { OutputIndex = _messageIndex, Item = item }).ConfigureAwait(false);
        await SendAsync(new ResponseStreamEvent("response.content_part.added", 0)
        {
            ItemId = _messageId, OutputIndex = _messageIndex, ContentIndex = 0, Part = ResponsesEndpoint.OutputText(""),
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// Closes the items in output order: the message's text and part, each call the reader confirmed (its arguments whole;
    /// a call announced but never finished, cut by the token limit, ends with what was sent and stays out of the response, as
    /// the whole response leaves it out), then the response with usage.
    /// </summary>
    private async Task<ResponseBody> FinishAsync(FinishReason? reason, CompletionUsage usage)
    {
        if (_messageIndex < 0 && _calls.Count == 0) await OpenMessageAsync().ConfigureAwait(false);   // an empty answer is an empty message
        var confirmed = reader is null ? [] : reader.Calls.Select(c => c.Id).ToHashSet();
        var output = new List<ResponseOutputItem>();
        for (int i = 0; i < _output.Count; i++)
        {
            if (i == _messageIndex)
            {
                string text = _text.ToString();
                await SendAsync(new ResponseStreamEvent("response.output_text.done", 0)
                {
                    ItemId = _messageId, OutputIndex = i, ContentIndex = 0, Text = text, Logprobs = [],
                }).ConfigureAwait(false);
                await SendAsync(new ResponseStreamEvent("response.content_part.done", 0)
                {
                    ItemId = _messageId, OutputIndex = i, ContentIndex = 0, Part = ResponsesEndpoint.OutputText(text),
                }).ConfigureAwait(false);
                var message = ResponsesEndpoint.Message(text, "completed", _messageId);
                await SendAsync(new ResponseStreamEvent("response.output_item.done", 0) { OutputIndex = i, Item = message }).ConfigureAwait(false);
                output.Add(message);
                continue;
            }
            var call = _calls.Values.First(c => c.OutputIndex == i);
            bool whole = confirmed.Contains(call.CallId);
            string arguments = call.Arguments.ToString();
            await SendAsync(new ResponseStreamEvent("response.function_call_arguments.done", 0)
            {
                ItemId = call.ItemId, OutputIndex = i, Name = call.Name, Arguments = arguments,
            }).ConfigureAwait(false);
            var item = ResponsesEndpoint.FunctionCall(call.CallId, call.Name, arguments, whole ? "completed" : "incomplete", call.ItemId);
            await SendAsync(new ResponseStreamEvent("response.output_item.done", 0) { OutputIndex = i, Item = item }).ConfigureAwait(false);
            if (whole) output.Add(item);
        }
        var finished = ResponsesEndpoint.Finished(response, output, reason, usage);
        await SendAsync(new ResponseStreamEvent(finished.Status == "incomplete" ? "response.incomplete" : "response.completed", 0) { Response = finished })
            .ConfigureAwait(false);
        return finished;
    }

    private async Task SendAsync(ResponseStreamEvent e)
    {
        e = e with { SequenceNumber = _sequence++ };
        await context.Response.WriteAsync($"event: {e.Type}\ndata: {JsonSerializer.Serialize(e, ServerJsonContext.Default.ResponseStreamEvent)}\n\n",
            context.RequestAborted).ConfigureAwait(false);
        await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
    }
}
