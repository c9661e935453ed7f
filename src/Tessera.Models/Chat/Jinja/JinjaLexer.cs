using System.Globalization;
using System.Text;

namespace Tessera.Models.Chat.Jinja;

internal enum SegmentKind { Text, Output, Statement }

/// <summary>A piece of template text, or the inside of a {{ }} or {% %} tag, with its offset in the template.</summary>
internal readonly record struct Segment(SegmentKind Kind, string Content, int Position);

internal enum TokenKind { Name, String, Integer, Float, Operator, End }

internal readonly record struct Token(TokenKind Kind, string Text, int Position, object? Value = null)
{
    public bool Is(string op) => (Kind == TokenKind.Operator || Kind == TokenKind.Name) && Text == op;
}

/// <summary>
/// Splits a template into text and tags the way Hugging Face's chat-template environment does: Jinja's whitespace control
/// ("{%-", "-%}", ...) plus trim_blocks (the newline after a block or comment tag goes) and lstrip_blocks (spaces and tabs
/// between a line's start and a block or comment tag go); then splits a tag's inside into tokens.
/// </summary>
internal static class JinjaLexer
{
    public static List<Segment> Segments(string source, Func<int, string, Exception> error)
    {
        var segments = new List<Segment>();
        int i = 0;
        bool trimNext = false, newlineNext = false;
        while (i < source.Length)
        {
            int open = NextTag(source, i);
            string text = source[i..(open < 0 ? source.Length : open)];
            if (newlineNext) text = text.StartsWith("\r\n", StringComparison.Ordinal) ? text[2..] : text.StartsWith('\n') ? text[1..] : text;
            if (trimNext) text = text.TrimStart();
            if (open < 0)
            {
                if (text.Length > 0) segments.Add(new Segment(SegmentKind.Text, text, i));
                break;
            }
            char kind = source[open + 1];
            int innerStart = open + 2;
            bool stripBefore = innerStart < source.Length && source[innerStart] == '-';
            bool keepIndent = innerStart < source.Length && source[innerStart] == '+';
            if (stripBefore || keepIndent) innerStart++;
            if (stripBefore) text = text.TrimEnd();
            else if (kind != '{' && !keepIndent)
            {
                // lstrip_blocks: spaces and tabs between the start of the tag's line in the source and the tag go.
                int k = open;
                while (k > 0 && source[k - 1] is ' ' or '\t') k--;
                if (k == 0 || source[k - 1] == '\n') text = text.TrimEnd(' ', '\t');
            }
            if (text.Length > 0) segments.Add(new Segment(SegmentKind.Text, text, i));
            string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int end = kind == '#' ? source.IndexOf(close, innerStart, StringComparison.Ordinal) : FindClose(source, innerStart, close);
            if (end < 0) throw error(open, $"the tag opened here is never closed with '{close}'");
            bool stripAfter = end > innerStart && source[end - 1] == '-';
            string inner = source[innerStart..(stripAfter ? end - 1 : end)];
            if (kind == '{') segments.Add(new Segment(SegmentKind.Output, inner, innerStart));
            else if (kind == '%') segments.Add(new Segment(SegmentKind.Statement, inner, innerStart));
            trimNext = stripAfter;
            newlineNext = kind != '{' && !stripAfter;                // trim_blocks
            i = end + 2;
        }
        return segments;
    }

    private static int NextTag(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
            if (s[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>The closing delimiter, skipping string literals (a "%}" inside quotes does not close the tag).</summary>
    private static int FindClose(string s, int from, string close)
    {
        for (int i = from; i < s.Length - 1; i++)
        {
            char c = s[i];
            if (c is '\'' or '"')
            {
                int j = i + 1;
                while (j < s.Length && s[j] != c) j += s[j] == '\\' ? 2 : 1;
                i = j;
                continue;
            }
            if (c == close[0] && s[i + 1] == close[1]) return i;
        }
        return -1;
    }

    private static readonly string[] Operators = ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", "{", "}", ".", ",", ":", "|", "="];

    public static List<Token> Tokens(string inner, int offset, Func<int, string, Exception> error)
    {
        var tokens = new List<Token>();
        int i = 0;
        while (i < inner.Length)
        {
            char c = inner[i];
            if (char.IsWhiteSpace(c)) { i++; continue; }
            int at = offset + i;
            if (char.IsLetter(c) || c == '_')
            {
                int j = i;
                while (j < inner.Length && (char.IsLetterOrDigit(inner[j]) || inner[j] == '_')) j++;
                tokens.Add(new Token(TokenKind.Name, inner[i..j], at));
                i = j;
            }
            else if (char.IsDigit(c))
            {
                int j = i;
                while (j < inner.Length && (char.IsDigit(inner[j]) || inner[j] == '_')) j++;
                bool isFloat = j + 1 < inner.Length && inner[j] == '.' && char.IsDigit(inner[j + 1]);
                if (isFloat) { j++; while (j < inner.Length && char.IsDigit(inner[j])) j++; }
                string number = inner[i..j].Replace("_", "");
                tokens.Add(isFloat
                    ? new Token(TokenKind.Float, number, at, double.Parse(number, CultureInfo.InvariantCulture))
                    : new Token(TokenKind.Integer, number, at, long.Parse(number, CultureInfo.InvariantCulture)));
                i = j;
            }
            else if (c is '\'' or '"')
            {
                var sb = new StringBuilder();
                int j = i + 1;
                for (; j < inner.Length && inner[j] != c; j++)
                {
                    if (inner[j] != '\\' || j + 1 >= inner.Length) { sb.Append(inner[j]); continue; }
                    char e = inner[++j];
                    sb.Append(e switch { 'n' => '\n', 't' => '\t', 'r' => '\r', '0' => '\0', _ => e });
                }
                if (j >= inner.Length) throw error(at, "a string literal is never closed");
                tokens.Add(new Token(TokenKind.String, inner[i..(j + 1)], at, sb.ToString()));
                i = j + 1;
            }
            else
            {
                var op = Operators.FirstOrDefault(o => string.CompareOrdinal(inner, i, o, 0, o.Length) == 0)
                    ?? throw error(at, $"unexpected character '{c}'");
                tokens.Add(new Token(TokenKind.Operator, op, at));
                i += op.Length;
            }
        }
        tokens.Add(new Token(TokenKind.End, "", offset + inner.Length));
        return tokens;
    }
}
