package hashserv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Framing of bitbake's asyncrpc stream protocol (bb/asyncrpc/connection.py):
// newline-terminated UTF-8 lines; in normal mode one JSON value per line;
// a message of chunkSize-1 characters or more travels as the line
// {"chunk-stream": null}, then lines of chunkSize-1 characters, then an
// empty line.
const (
	// chunkSize is bitbake's DEFAULT_MAX_CHUNK (32 KiB): messages of
	// chunkSize-1 characters or more are chunked, in pieces of
	// chunkSize-1 characters.
	chunkSize = 32 * 1024

	// MaxLine is the longest line accepted, without its newline: 64 KiB,
	// the limit of the asyncio stream reader bitbake's server reads with.
	// A longer line closes the connection, as it does in bitbake.
	MaxLine = 64 * 1024
)

// Errors of the framing layer. Each closes the connection without an
// answer, as bitbake's server does.
var (
	errLineTooLong    = errors.New("line longer than 64 KiB")
	errPartialLine    = errors.New("connection closed in the middle of a line")
	errInvalidUTF8    = errors.New("line is not valid UTF-8")
	errMessageTooLong = errors.New("chunked message longer than the maximum message size")
)

// protocolError is bad input from a client: the connection is closed
// without an answer (bitbake raises ClientError, a ValueError or a
// KeyError, all of which end the connection silently).
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// lineReader reads newline-terminated lines of at most max bytes. Its
// buffer grows with the longest line seen, so an idle connection holds a
// few KiB only.
type lineReader struct {
	br  *bufio.Reader
	buf []byte
	max int
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 4096), max: max}
}

// readLine returns the next line without its newline. The slice is valid
// until the next call. io.EOF means the peer closed the connection at a
// line boundary. A line over max bytes fails as soon as the bytes that
// make it too long arrive.
func (r *lineReader) readLine() ([]byte, error) {
	r.buf = r.buf[:0]
	for {
		if r.br.Buffered() == 0 {
			// Peek(1) waits for whatever arrives next.
			if _, err := r.br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) && len(r.buf) > 0 {
					return nil, errPartialLine
				}
				return nil, err
			}
		}
		p, _ := r.br.Peek(r.br.Buffered())
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			if len(r.buf)+i > r.max {
				return nil, errLineTooLong
			}
			r.buf = append(r.buf, p[:i]...)
			r.br.Discard(i + 1)
			return r.buf, nil
		}
		if len(r.buf)+len(p) > r.max {
			return nil, errLineTooLong
		}
		r.buf = append(r.buf, p...)
		r.br.Discard(len(p))
	}
}

// lineBuffered reports whether a whole line is already buffered, so that
// reading it will not block: replies are flushed only when it is not,
// which batches the answers to pipelined stream queries.
func (r *lineReader) lineBuffered() bool {
	n := r.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := r.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// readText reads a line as bitbake's StreamConnection.recv does: valid
// UTF-8, trailing whitespace stripped.
func (r *lineReader) readText() (string, error) {
	b, err := r.readLine()
	if err != nil {
		return "", err
	}
	if !utf8.Valid(b) {
		return "", errInvalidUTF8
	}
	return strings.TrimRightFunc(string(b), pyIsSpace), nil
}

// message is one decoded normal-mode message: a JSON object whose keys
// name commands.
type message map[string]json.RawMessage

// decoder reads normal-mode messages, joining chunked ones.
type decoder struct {
	r          *lineReader
	maxMessage int
}

// readMessage reads the next message. It returns io.EOF when the client
// closed the connection between messages and a *protocolError (or a
// framing error) for anything bitbake's server would close on: invalid
// UTF-8 or JSON, a value that is not an object, null (bitbake's server
// ends the connection on it), a chunked message over maxMessage bytes.
func (d *decoder) readMessage() (message, error) {
	line, err := d.r.readText()
	if err != nil {
		return nil, err
	}
	m, err := decodeObject([]byte(line))
	if err != nil {
		return nil, err
	}
	if _, ok := m["chunk-stream"]; !ok {
		return m, nil
	}
	var whole []byte
	for {
		b, err := d.r.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, protoErrorf("connection closed in a chunked message")
			}
			return nil, err
		}
		if !utf8.Valid(b) {
			return nil, errInvalidUTF8
		}
		// bitbake's server strips trailing whitespace from every line and
		// ends the chunks at a line that is then empty. It joins the
		// stripped lines, which drops a space that falls at the end of a
		// chunk; the lines are joined here as sent.
		if len(bytes.TrimRightFunc(b, pyIsSpace)) == 0 {
			break
		}
		if len(whole)+len(b) > d.maxMessage {
			return nil, errMessageTooLong
		}
		whole = append(whole, b...)
	}
	return decodeObject(whole)
}

// decodeObject parses a message. Anything but a non-null JSON object is a
// protocol error; bitbake's server closes the connection on all of them.
func decodeObject(b []byte) (message, error) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, protoErrorf("invalid message: %v", err)
	}
	if m == nil {
		return nil, protoErrorf("null message")
	}
	return m, nil
}

// pyIsSpace is Python's str.isspace for one character: what str.strip()
// and str.split() treat as whitespace. It differs from unicode.IsSpace in
// U+001C..U+001F.
func pyIsSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', 0x1c, 0x1d, 0x1e, 0x1f, ' ', 0x85, 0xa0,
		0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}

// pySplit is Python's str.split() without arguments.
func pySplit(s string) []string { return strings.FieldsFunc(s, pyIsSpace) }

// JSON output. Replies are written the way Python's json.dumps writes them
// (keys in insertion order, ", " and ": " separators, non-ASCII escaped as
// \uXXXX), so that they are byte for byte bitbake's.

// object is a JSON object with ordered keys.
type object []field

type field struct {
	key   string
	value any
}

// pyInt and pyFloat are numbers as Python prints them: an int, or a float
// in repr form (0.5, 1.0, 8.7e-05).
type (
	pyInt   int64
	pyFloat float64
)

// appendJSON appends v as Python's json.dumps writes it. v is nil, bool,
// string, pyInt, pyFloat, object or []string.
func appendJSON(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		if v {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	case string:
		return appendPyString(b, v)
	case pyInt:
		return strconv.AppendInt(b, int64(v), 10)
	case pyFloat:
		return appendPyFloat(b, float64(v))
	case object:
		b = append(b, '{')
		for i, f := range v {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendPyString(b, f.key)
			b = append(b, ": "...)
			b = appendJSON(b, f.value)
		}
		return append(b, '}')
	case []string:
		b = append(b, '[')
		for i, s := range v {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendPyString(b, s)
		}
		return append(b, ']')
	}
	panic(fmt.Sprintf("hashserv: cannot encode %T", v))
}

const hexDigits = "0123456789abcdef"

// appendPyString writes s as json.dumps does with ensure_ascii: printable
// ASCII as is, the usual short escapes, everything else as \uXXXX
// (surrogate pairs above U+FFFF). Invalid UTF-8 is written as U+FFFD.
func appendPyString(b []byte, s string) []byte {
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"':
			b = append(b, `\"`...)
		case r == '\\':
			b = append(b, `\\`...)
		case r == '\n':
			b = append(b, `\n`...)
		case r == '\r':
			b = append(b, `\r`...)
		case r == '\t':
			b = append(b, `\t`...)
		case r == '\b':
			b = append(b, `\b`...)
		case r == '\f':
			b = append(b, `\f`...)
		case r >= 0x20 && r <= 0x7e:
			b = append(b, byte(r))
		case r > 0xffff:
			r -= 0x10000
			b = appendU(b, 0xd800|(r>>10)&0x3ff)
			b = appendU(b, 0xdc00|r&0x3ff)
		default:
			b = appendU(b, r)
		}
	}
	return append(b, '"')
}

func appendU(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}

// appendPyFloat writes f as Python's float repr: the shortest form that
// reads back, in exponent form when the decimal exponent is below -4 or at
// least 16, and always with a '.' or an exponent.
func appendPyFloat(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, 1):
		return append(b, "Infinity"...)
	case math.IsInf(f, -1):
		return append(b, "-Infinity"...)
	}
	e := strconv.FormatFloat(f, 'e', -1, 64)
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if f != 0 && (exp < -4 || exp >= 16) {
		return append(b, e...)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	b = append(b, s...)
	if !strings.ContainsAny(s, ".") {
		b = append(b, ".0"...)
	}
	return b
}

// encodeMessage returns v framed for the wire: one line, or a chunk
// stream when it is chunkSize-1 characters or longer (the JSON is ASCII,
// so characters are bytes).
func encodeMessage(v any) []byte {
	msg := appendJSON(nil, v)
	if len(msg) < chunkSize-1 {
		return append(msg, '\n')
	}
	out := make([]byte, 0, len(msg)+len(msg)/(chunkSize-1)+32)
	out = append(out, "{\"chunk-stream\": null}\n"...)
	for len(msg) > 0 {
		n := min(len(msg), chunkSize-1)
		out = append(out, msg[:n]...)
		out = append(out, '\n')
		msg = msg[n:]
	}
	return append(out, '\n')
}
