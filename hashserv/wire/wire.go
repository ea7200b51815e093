// Package wire is the framing of bitbake's hash equivalence protocol,
// OEHASHEQUIV 1.1 (bitbake's lib/bb/asyncrpc and lib/hashserv), shared by
// the server (hashserv) and the client (hashimport) so that both frame
// messages the one way bitbake does.
//
// A connection opens with a handshake: the protocol line, header lines and
// an empty line. Then it carries newline-terminated UTF-8 lines: in normal
// mode one JSON value per line, where a message of ChunkSize-1 characters
// or more travels as the line {"chunk-stream": null}, the JSON text cut
// into lines of ChunkSize-1 characters, and an empty line; in a stream mode
// (get-stream, exists-stream) raw text lines until END.
//
// What is said in a message (commands, replies, Python's JSON spelling)
// belongs to the packages on either side.
package wire

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	// ProtocolName and ProtocolVersion make the first line of a
	// connection, ProtocolLine.
	ProtocolName    = "OEHASHEQUIV"
	ProtocolVersion = "1.1"
	ProtocolLine    = ProtocolName + " " + ProtocolVersion

	// ClientHello is the handshake a client sends: it asks for no headers
	// (bitbake's server has none to send).
	ClientHello = ProtocolLine + "\nneeds-headers: false\n\n"

	// ChunkSize is bitbake's DEFAULT_MAX_CHUNK (32 KiB): messages of
	// ChunkSize-1 characters or more are chunked, in pieces of
	// ChunkSize-1 characters.
	ChunkSize = 32 * 1024

	// MaxLine is the longest line accepted, without its newline: 64 KiB,
	// the limit of the asyncio stream reader bitbake reads with on both
	// sides. bitbake never sends a longer one; a peer that does is not
	// bitbake.
	MaxLine = 64 * 1024

	// maxHeaders bounds the header lines of a handshake (bitbake sets no
	// bound; its client sends one).
	maxHeaders = 64
)

// Errors of the framing. bitbake's server closes the connection without an
// answer on each; its client drops the connection.
var (
	ErrLineTooLong    = errors.New("line longer than 64 KiB")
	ErrPartialLine    = errors.New("connection closed in the middle of a line")
	ErrPartialMessage = errors.New("connection closed in a chunked message")
	ErrInvalidUTF8    = errors.New("line is not valid UTF-8")
	ErrMessageTooLong = errors.New("chunked message longer than the maximum message size")
	ErrHandshake      = errors.New("bad handshake")
)

// LineReader reads newline-terminated lines of at most max bytes. Its
// buffer grows with the longest line seen, so an idle connection holds a
// few KiB only.
type LineReader struct {
	br  *bufio.Reader
	buf []byte
	max int
}

// NewLineReader reads lines of at most max bytes from r.
func NewLineReader(r io.Reader, max int) *LineReader {
	return &LineReader{br: bufio.NewReaderSize(r, 4096), max: max}
}

// ReadLine returns the next line without its newline. The slice is valid
// until the next call. io.EOF means the peer closed the connection at a
// line boundary. A line over max bytes fails as soon as the bytes that
// make it too long arrive.
func (r *LineReader) ReadLine() ([]byte, error) {
	r.buf = r.buf[:0]
	for {
		if r.br.Buffered() == 0 {
			// Peek(1) waits for whatever arrives next.
			if _, err := r.br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) && len(r.buf) > 0 {
					return nil, ErrPartialLine
				}
				return nil, err
			}
		}
		p, _ := r.br.Peek(r.br.Buffered())
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			if len(r.buf)+i > r.max {
				return nil, ErrLineTooLong
			}
			r.buf = append(r.buf, p[:i]...)
			r.br.Discard(i + 1)
			return r.buf, nil
		}
		if len(r.buf)+len(p) > r.max {
			return nil, ErrLineTooLong
		}
		r.buf = append(r.buf, p...)
		r.br.Discard(len(p))
	}
}

// LineBuffered reports whether a whole line is already buffered, so that
// reading it will not block: a server flushes replies only when it is not,
// which batches the answers to pipelined stream queries.
func (r *LineReader) LineBuffered() bool {
	n := r.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := r.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// ReadText reads a line as bitbake's StreamConnection.recv does: valid
// UTF-8, trailing whitespace stripped.
func (r *LineReader) ReadText() (string, error) {
	b, err := r.ReadLine()
	if err != nil {
		return "", err
	}
	if !utf8.Valid(b) {
		return "", ErrInvalidUTF8
	}
	return strings.TrimRightFunc(string(b), IsSpace), nil
}

// ReadMessage reads the next normal-mode message and returns its JSON
// text, joined when it came chunked; it does not check that the text is
// JSON. A chunked message over maxMessage bytes is an error. io.EOF means
// the peer closed the connection between messages.
func ReadMessage(r *LineReader, maxMessage int) ([]byte, error) {
	line, err := r.ReadText()
	if err != nil {
		return nil, err
	}
	if !isChunkStream(line) {
		return []byte(line), nil
	}
	var whole []byte
	for {
		b, err := r.ReadLine()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, ErrPartialLine) {
				return nil, ErrPartialMessage
			}
			return nil, err
		}
		if !utf8.Valid(b) {
			return nil, ErrInvalidUTF8
		}
		// bitbake strips trailing whitespace from every line and ends the
		// chunks at a line that is then empty. It joins the stripped
		// lines, which drops a space that falls at the end of a chunk; the
		// lines are joined here as sent.
		if len(bytes.TrimRightFunc(b, IsSpace)) == 0 {
			break
		}
		if len(whole)+len(b) > maxMessage {
			return nil, ErrMessageTooLong
		}
		whole = append(whole, b...)
	}
	return whole, nil
}

// isChunkStream tells the first line of a chunked message: a JSON object
// with the key chunk-stream.
func isChunkStream(line string) bool {
	if !strings.Contains(line, `"chunk-stream"`) {
		return false
	}
	var m map[string]json.RawMessage
	if json.Unmarshal([]byte(line), &m) != nil {
		return false
	}
	_, ok := m["chunk-stream"]
	return ok
}

// AppendMessage appends the JSON text msg framed for the wire: one line,
// or a chunk stream when it is ChunkSize-1 characters or longer. Lines are
// counted in characters, as Python counts a str.
func AppendMessage(dst, msg []byte) []byte {
	if utf8.RuneCount(msg) < ChunkSize-1 {
		dst = append(dst, msg...)
		return append(dst, '\n')
	}
	dst = append(dst, "{\"chunk-stream\": null}\n"...)
	for len(msg) > 0 {
		n, chars := 0, 0
		for n < len(msg) && chars < ChunkSize-1 {
			_, size := utf8.DecodeRune(msg[n:])
			n += size
			chars++
		}
		dst = append(dst, msg[:n]...)
		dst = append(dst, '\n')
		msg = msg[n:]
	}
	return append(dst, '\n')
}

// ReadHandshake reads a client's handshake as bitbake's server does
// (AsyncServerConnection.process_requests): the protocol line with a
// version above 1.0 and at most 1.1, header lines "tag: value", an empty
// line. It returns the headers, tags in lower case. Errors wrap
// ErrHandshake, or are the LineReader's.
func ReadHandshake(r *LineReader) (map[string]string, error) {
	line, err := r.ReadText()
	if err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrHandshake, fmt.Sprintf(format, args...))
	}
	if line == "" {
		return nil, bad("empty protocol line")
	}
	f := Fields(line)
	if len(f) != 2 {
		return nil, bad("bad protocol line %q", line)
	}
	if f[0] != ProtocolName {
		return nil, bad("not the %s protocol: %q", ProtocolName, line)
	}
	v, ok := parseVersion(f[1])
	if !ok || !(compareVersion(v, []int{1, 0}) > 0 && compareVersion(v, []int{1, 1}) <= 0) {
		return nil, bad("unsupported protocol version %q", f[1])
	}
	headers := map[string]string{}
	for n := 0; ; n++ {
		if n == maxHeaders {
			return nil, bad("more than %d header lines", maxHeaders)
		}
		h, err := r.ReadText()
		if err != nil {
			return nil, err
		}
		if h == "" {
			return headers, nil
		}
		tag, value, ok := strings.Cut(h, ":")
		if !ok {
			return nil, bad("bad header line %q", h)
		}
		headers[strings.ToLower(tag)] = strings.TrimFunc(value, IsSpace)
	}
}

// parseVersion parses "1.1" as bitbake does (int() of each dotted part).
func parseVersion(s string) ([]int, bool) {
	var v []int
	for p := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, false
		}
		v = append(v, n)
	}
	return v, true
}

// compareVersion compares like Python tuples.
func compareVersion(a, b []int) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

// IsSpace is Python's str.isspace for one character: what str.strip() and
// str.split() treat as whitespace. It differs from unicode.IsSpace in
// U+001C..U+001F.
func IsSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', 0x1c, 0x1d, 0x1e, 0x1f, ' ', 0x85, 0xa0,
		0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}

// Fields is Python's str.split() without arguments.
func Fields(s string) []string { return strings.FieldsFunc(s, IsSpace) }
