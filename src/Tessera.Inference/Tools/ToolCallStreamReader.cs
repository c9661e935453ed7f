using System.Text;
using System.Text.Json;
using Tessera.Models.Chat;

namespace Tessera.Inference.Tools;

/// <summary>
/// Reads one reply's tool calls while the reply is being written, so that a stream can send them the way OpenAI's does: a
/// call's name as soon as it is known, then its arguments' JSON text piece by piece. Give it the reply's text as it grows
/// (<see cref="Append"/>) and, when the reply ends, call <see cref="Finish"/>.
/// <para><see cref="ToolCallFormat.Parse"/> stays the authority: <see cref="Finish"/> reads the whole reply with it, sends what
/// is left of each call's arguments and any call the reader had not announced, and gives the content the whole-reply path
/// gives. So that the pieces can only ever join into <c>Parse</c>'s arguments, a piece is sent only when it is certain: the
/// bytes of the arguments object between its braces, exactly as written (<c>Parse</c> takes that object's raw text), read
/// with <see cref="Utf8JsonReader"/>, the reader <see cref="JsonDocument"/> uses, so that a call stops streaming at the first
/// byte that breaks its JSON; a string of arguments is sent once whole; text that may be the start of the closing tag is held
/// until the next text shows it is not. What no reader can know in advance: whether a call that began will be finished. A call cut
/// by max_tokens or a stop string, or one a free model breaks after it began, has been announced and partly sent; such a
/// call is counted in <see cref="Unconfirmed"/>, gets no more pieces, and the rest of the stream follows <c>Parse</c>.</para>
/// <para>Content streams as <see cref="ToolCallFormat.Streamable"/> says, until the first call's tag; what comes after a call
/// is sent by <see cref="Finish"/> (the whole-reply path's content, trimmed).</para>
/// </summary>
public sealed class ToolCallStreamReader
{
    private enum Place { Text, Plain, Body, Done }

    private readonly ToolCallFormat _format;
    private readonly ToolCallFraming _framing;
    private readonly bool _forced;
    private readonly int _maxCalls;
    private readonly Func<string> _newId;
    private readonly StringBuilder _text = new();
    private readonly List<Announced> _calls = [];
    private List<ToolCallStreamEvent> _events = [];
    private Place _place = Place.Text;
    private int _at;                // chars of the text the framing has read
    private int _bodyStart, _fed;   // where the current call's text began; chars of it given to _json
    private int _contentSent;       // chars of the text sent as content
    private bool _calling;          // a call's tag (or the reply's call) was seen: content waits for Finish
    private CallJson? _json;
    private List<ChatToolCall>? _result;

    /// <summary>A reader of a reply in <paramref name="format"/>.</summary>
    /// <param name="format">How the model writes calls.</param>
    /// <param name="forced">Whether the reply is forced calls (its text, after the format's forced opening, is one call's JSON, or several calls as the format writes them).</param>
    /// <param name="maxCalls">Most calls to report (1 for <c>parallel_tool_calls: false</c>); later ones are read and dropped.</param>
    /// <param name="newId">Makes call ids; the format's own by default.</param>
    public ToolCallStreamReader(ToolCallFormat format, bool forced, int maxCalls = int.MaxValue, Func<string>? newId = null)
    {
        _format = format ?? throw new ArgumentNullException(nameof(format));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCalls, 1);
        _framing = format.Framing;
        _forced = forced;
        _maxCalls = maxCalls;
        _newId = newId ?? format.NewCallId;
        if (forced && _framing.Open is not null) BeginBody(0, _framing.List ? "[" : "");
    }

    /// <summary>After <see cref="Finish"/>: the reply's calls as <see cref="ToolCallFormat.Parse"/> reads them (at most maxCalls), with the ids the reader sent.</summary>
    public IReadOnlyList<ChatToolCall> Calls => _result ?? throw new InvalidOperationException("the calls are known once Finish has been called");

    /// <summary>After <see cref="Finish"/>: calls announced that <see cref="ToolCallFormat.Parse"/> did not confirm (a call cut short, or broken after it began).</summary>
    public int Unconfirmed { get; private set; }

    /// <summary>Takes in the reply's next text; returns what can be sent now.</summary>
    public IReadOnlyList<ToolCallStreamEvent> Append(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (_result is not null) throw new InvalidOperationException("the reply has been finished");
        _text.Append(text);
        Advance(_text.ToString());
        return Take();
    }

    /// <summary>
    /// The reply ended: what <see cref="ToolCallFormat.Parse"/> says that has not been sent. The content not yet sent (the
    /// whole-reply path's content for the text after what was sent; all of that text when it holds no call), then, for each
    /// call, the rest of its arguments and its end, or, for a call not announced, its start, its arguments and its end.
    /// </summary>
    public IReadOnlyList<ToolCallStreamEvent> Finish()
    {
        if (_result is not null) throw new InvalidOperationException("the reply has been finished");
        string text = _text.ToString(), rest = text[_contentSent..];
        var (content, parsed) = _format.Parse(rest, _forced, () => "");
        var calls = parsed.Take(_maxCalls).ToList();
        if (calls.Count == 0) { if (rest.Length > 0) _events.Add(ToolCallStreamEvent.Content(rest)); }
        else if (content is not null) _events.Add(ToolCallStreamEvent.Content(content));
        _result = [];
        int next = 0;
        foreach (var call in calls)
        {
            while (next < _calls.Count && !Confirms(_calls[next], call)) next++;
            Announced sent;
            if (next < _calls.Count) sent = _calls[next++];
            else
            {
                sent = Start(call.Name);
                next = _calls.Count;
            }
            if (call.Arguments.Length > sent.Arguments.Length) Piece(sent, call.Arguments[sent.Arguments.Length..]);
            End(sent);
            sent.Confirmed = true;
            _result.Add(new ChatToolCall(sent.Id, call.Name, call.Arguments));
        }
        Unconfirmed = _calls.Count(c => !c.Confirmed);
        return Take();
    }

    /// <summary>Whether what was sent of a call agrees with <paramref name="call"/>: its name, and arguments that begin with what was sent.</summary>
    private static bool Confirms(Announced sent, ChatToolCall call) =>
        sent.Name == call.Name && call.Arguments.StartsWith(sent.Arguments.ToString(), StringComparison.Ordinal);

    private List<ToolCallStreamEvent> Take()
    {
        var events = _events;
        _events = [];
        return events;
    }

    private void Advance(string s)
    {
        while (true)
        {
            switch (_place)
            {
                case Place.Plain:
                    SendContent(s, s.Length);
                    return;
                case Place.Done:
                    return;
                case Place.Body:
                    if (!FeedBody(s)) return;
                    break;
                case Place.Text when _framing.Open is null:
                    if (!ReadBareStart(s)) return;
                    break;
                case Place.Text:
                    int open = s.IndexOf(_framing.Open, _at, StringComparison.Ordinal);
                    if (open < 0)
                    {
                        SendContent(s, s.Length - Partial(s, _at, _framing.Open));
                        return;
                    }
                    SendContent(s, open);
                    _calling = true;
                    BeginBody(open + _framing.Open.Length, "");
                    break;
            }
        }
    }

    /// <summary>
    /// A reply that is the call itself (Llama): space, perhaps the prefix, then <c>{</c> begins the call; anything else before the
    /// prefix makes the reply text; the prefix followed by anything but a call leaves the reply to <see cref="Finish"/>.
    /// Returns whether the place changed.
    /// </summary>
    private bool ReadBareStart(string s)
    {
        int i = SkipSpace(s, _at);
        if (i == s.Length) return false;
        string prefix = _framing.Prefix ?? "";
        if (prefix.Length > 0 && string.CompareOrdinal(s, i, prefix, 0, prefix.Length) == 0)
        {
            int j = SkipSpace(s, i + prefix.Length);
            if (j == s.Length) return false;
            _calling = true;
            if (s[j] == '{') BeginBody(j, "");
            else _place = Place.Done;
            return true;
        }
        if (prefix.AsSpan().StartsWith(s.AsSpan(i))) return false;
        if (s[i] == '{')
        {
            _calling = true;
            BeginBody(i, "");
        }
        else _place = Place.Plain;
        return true;
    }

    private static int SkipSpace(string s, int i)
    {
        while (i < s.Length && char.IsWhiteSpace(s[i])) i++;
        return i;
    }

    private void BeginBody(int start, string lead)
    {
        _place = Place.Body;
        _bodyStart = _fed = start;
        _json = new CallJson(this, _framing.List ? 1 : 0);
        if (lead.Length > 0) _json.Feed(lead);
    }

    /// <summary>Gives the call's JSON the text that is certainly its own; returns whether the call's text ended (its tag closed it).</summary>
    private bool FeedBody(string s)
    {
        int limit = s.Length;
        if (_framing.Close is { } close)
        {
            // Parse ends a call's text at the first closing tag, even one inside a JSON string; so does the reader.
            int end = s.IndexOf(close, _bodyStart, StringComparison.Ordinal);
            if (end >= 0)
            {
                if (end > _fed) _json!.Feed(s[_fed..end]);
                _json!.Close();
                _at = end + close.Length;
                _place = Place.Text;
                return true;
            }
            limit -= Partial(s, _fed, close);
        }
        if (limit > _fed && char.IsHighSurrogate(s[limit - 1])) limit--;   // half a character waits for its other half
        if (limit > _fed) _json!.Feed(s[_fed..limit]);
        _fed = Math.Max(_fed, limit);
        return false;
    }

    /// <summary>How many chars at the end of <paramref name="s"/> (after <paramref name="from"/>) could be the start of <paramref name="tag"/>.</summary>
    private static int Partial(string s, int from, string tag)
    {
        for (int keep = Math.Min(tag.Length - 1, s.Length - from); keep > 0; keep--)
            if (string.CompareOrdinal(s, s.Length - keep, tag, 0, keep) == 0) return keep;
        return 0;
    }

    private void SendContent(string s, int safe)
    {
        if (_calling || _forced || safe <= _contentSent) return;
        _events.Add(ToolCallStreamEvent.Content(s[_contentSent..safe]));
        _contentSent = safe;
    }

    private Announced Start(string name)
    {
        var call = new Announced(_calls.Count, _newId(), name);
        _calls.Add(call);
        _events.Add(ToolCallStreamEvent.Started(call.Index, call.Id, name));
        return call;
    }

    private void Piece(Announced call, string piece)
    {
        if (piece.Length == 0) return;
        call.Arguments.Append(piece);
        _events.Add(ToolCallStreamEvent.Arguments(call.Index, piece));
    }

    private void End(Announced call)
    {
        if (call.Ended) return;
        call.Ended = true;
        _events.Add(ToolCallStreamEvent.Ended(call.Index));
    }

    /// <summary>A call the reader announced: its place, id, name and the arguments sent so far.</summary>
    private sealed class Announced(int index, string id, string name)
    {
        public int Index { get; } = index;
        public string Id { get; } = id;
        public string Name { get; } = name;
        public StringBuilder Arguments { get; } = new();
        public bool Ended { get; set; }
        public bool Stopped { get; set; }      // no more pieces: what follows is Finish's to say
        public bool Confirmed { get; set; }
    }

    /// <summary>
    /// The JSON of one call's text (Hermes, Llama: one object) or of the list of calls (Mistral: an array of objects), read as it
    /// grows with <see cref="Utf8JsonReader"/> over its UTF-8 bytes. Each call object's "name" announces the call; the bytes of
    /// its "arguments" (or "parameters") object go out as they come, up to and with its closing brace.
    /// </summary>
    private sealed class CallJson(ToolCallStreamReader owner, int callDepth)
    {
        private byte[] _bytes = new byte[256];
        private int _length, _consumed;
        private JsonReaderState _state;
        private bool _failed, _rootSeen;

        // The call object being read.
        private bool _inObject, _nameSeen, _invalid, _uncertain, _inArguments, _argumentsSentWhole;
        private string? _key, _name, _argumentsString;
        private int _argumentKeys, _argumentsStart = -1, _argumentsEnd = -1, _argumentsSent;
        private Announced? _call;

        public void Feed(string text)
        {
            if (_failed) return;
            int count = Encoding.UTF8.GetByteCount(text);
            if (_length + count > _bytes.Length) Array.Resize(ref _bytes, Math.Max(_bytes.Length * 2, _length + count));
            _length += Encoding.UTF8.GetBytes(text, 0, text.Length, _bytes, _length);
            var reader = new Utf8JsonReader(_bytes.AsSpan(_consumed, _length - _consumed), isFinalBlock: false, _state);
            try
            {
                while (reader.Read()) Token(ref reader, _consumed + (int)reader.TokenStartIndex);
            }
            catch (JsonException)
            {
                Fail();
                return;
            }
            _consumed += (int)reader.BytesConsumed;
            _state = reader.CurrentState;
            SendArguments();
        }

        /// <summary>The call's text ended (its closing tag came): a call object still open will not be finished.</summary>
        public void Close()
        {
            if (_inObject) Stop();
        }

        private void Token(ref Utf8JsonReader reader, int at)
        {
            int depth = reader.CurrentDepth;
            var type = reader.TokenType;
            if (!_rootSeen)
            {
                _rootSeen = true;
                if (type != (callDepth == 0 ? JsonTokenType.StartObject : JsonTokenType.StartArray)) { Fail(); return; }
                if (callDepth == 0) BeginObject();
                return;
            }
            if (type == JsonTokenType.StartObject && depth == callDepth && !_inObject) { BeginObject(); return; }
            if (!_inObject) return;
            if (type == JsonTokenType.EndObject && depth == callDepth) { EndObject(); return; }
            if (type == JsonTokenType.EndObject && depth == callDepth + 1 && _inArguments)
            {
                _inArguments = false;
                _argumentsEnd = at + 1;
                return;
            }
            if (depth != callDepth + 1) return;
            if (type == JsonTokenType.PropertyName)
            {
                _key = reader.GetString();
                // A second name or a second arguments key: which one counts is Parse's to say, so nothing more is sent.
                if ((_key == "name" && _nameSeen) || (_key is "arguments" or "parameters" && ++_argumentKeys > 1)) Stop();
                return;
            }
            if (_key is not { } key || type is JsonTokenType.EndObject or JsonTokenType.EndArray) return;
            _key = null;
            if (key == "name")
            {
                _nameSeen = true;
                if (type == JsonTokenType.String && !_uncertain)
                {
                    _name = reader.GetString();
                    Announce();
                }
                else Invalid();
            }
            else if (key is "arguments" or "parameters")
            {
                if (type == JsonTokenType.StartObject)
                {
                    _argumentsStart = at;
                    _inArguments = true;
                }
                else if (type == JsonTokenType.String) _argumentsString = reader.GetString();
                else Invalid();
            }
        }

        private void BeginObject()
        {
            _inObject = true;
            _nameSeen = _invalid = _uncertain = _inArguments = _argumentsSentWhole = false;
            _key = _name = _argumentsString = null;
            _argumentKeys = _argumentsSent = 0;
            _argumentsStart = _argumentsEnd = -1;
            _call = null;
        }

        private void EndObject()
        {
            _inObject = false;
            if (_invalid || _uncertain || _name is null) return;
            Announce();
            if (_call is null || _call.Stopped) return;
            if (_argumentKeys == 0) owner.Piece(_call, "{}");           // Parse's arguments when the call gives none
            SendArguments();
            owner.End(_call);
        }

        private void Announce()
        {
            if (_call is not null || _invalid || _uncertain || _name is null || owner._calls.Count >= owner._maxCalls) return;
            _call = owner.Start(_name);
            SendArguments();
        }

        private void SendArguments()
        {
            if (_call is null || _call.Stopped) return;
            if (_argumentsString is not null)
            {
                if (!_argumentsSentWhole) owner.Piece(_call, _argumentsString);
                _argumentsSentWhole = true;
                return;
            }
            if (_argumentsStart < 0) return;
            // Until its closing brace, every byte read so far belongs to the arguments object (a partial token at the end, too).
            int limit = _argumentsEnd >= 0 ? _argumentsEnd : _length;
            int from = _argumentsStart + _argumentsSent;
            if (limit <= from) return;
            owner.Piece(_call, Encoding.UTF8.GetString(_bytes, from, limit - from));
            _argumentsSent = limit - _argumentsStart;
        }

        private void Invalid()
        {
            _invalid = true;
            Stop();
        }

        private void Stop()
        {
            _uncertain = true;
            if (_call is not null) _call.Stopped = true;
        }

        private void Fail()
        {
            _failed = true;
            Stop();
        }
    }
}
