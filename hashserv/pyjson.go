package hashserv

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/sstatefs/sstatefs/hashserv/wire"
)

// MaxLine is the longest line the server accepts, without its newline:
// 64 KiB, the limit of the asyncio stream reader bitbake's server reads
// with. A longer line closes the connection, as it does in bitbake.
const MaxLine = wire.MaxLine

// protocolError is bad input from a client: the connection is closed
// without an answer (bitbake raises ClientError, a ValueError or a
// KeyError, all of which end the connection silently).
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// message is one decoded normal-mode message: a JSON object whose keys
// name commands.
type message map[string]json.RawMessage

// decoder reads normal-mode messages.
type decoder struct {
	r          *wire.LineReader
	maxMessage int
}

// readMessage reads the next message. It returns io.EOF when the client
// closed the connection between messages and a *protocolError (or a
// framing error) for anything bitbake's server would close on: invalid
// UTF-8 or JSON, a value that is not an object, null (bitbake's server
// ends the connection on it), a chunked message over maxMessage bytes.
func (d *decoder) readMessage() (message, error) {
	b, err := wire.ReadMessage(d.r, d.maxMessage)
	if err != nil {
		return nil, err
	}
	return decodeObject(b)
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

// encodeMessage returns v as Python writes it, framed for the wire.
func encodeMessage(v any) []byte { return wire.AppendMessage(nil, appendJSON(nil, v)) }
