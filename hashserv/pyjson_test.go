package hashserv

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sstatefs/sstatefs/hashserv/wire"
	"github.com/sstatefs/sstatefs/index"
)

func TestAppendJSON(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{nil, `null`},
		{true, `true`},
		{object{{"a", pyInt(1)}, {"b", object{}}, {"c", []string{}}}, `{"a": 1, "b": {}, "c": []}`},
		{"plain", `"plain"`},
		{"q\"b\\n\nr\rt\tb\bf\f", `"q\"b\\n\nr\rt\tb\bf\f"`},
		{"\x00\x1f\x7f<&>", `"\u0000\u001f\u007f<&>"`},
		{"é€😀", `"\u00e9\u20ac\ud83d\ude00"`},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
		{[]string{"a", "b"}, `["a", "b"]`},
	} {
		if got := string(appendJSON(nil, tc.v)); got != tc.want {
			t.Errorf("%#v: got %s, want %s", tc.v, got, tc.want)
		}
	}
}

// Floats as Python's repr writes them (get-stats values).
func TestAppendPyFloat(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		want string
	}{
		{0, "0.0"},
		{1, "1.0"},
		{0.5, "0.5"},
		{0.007272145999195345, "0.007272145999195345"},
		{8.739024139591995e-05, "8.739024139591995e-05"},
		{0.0001, "0.0001"},
		{1e-05, "1e-05"},
		{1234567890123456.0, "1234567890123456.0"},
		{1e16, "1e+16"},
		{1.5e300, "1.5e+300"},
		{-2.5, "-2.5"},
		{math.Inf(1), "Infinity"},
	} {
		if got := string(appendPyFloat(nil, tc.f)); got != tc.want {
			t.Errorf("%v: got %s, want %s", tc.f, got, tc.want)
		}
	}
	if got := string(appendJSON(nil, (&requestStats{}).object())); got != `{"num": 0, "total_time": 0, "max_time": 0, "average": 0, "stdev": 0}` {
		t.Errorf("empty stats: %s", got)
	}
	var r requestStats
	for _, e := range []float64{1, 2, 3, 4} {
		r.add(e)
	}
	if got := string(appendJSON(nil, r.object())); got != `{"num": 4, "total_time": 10.0, "max_time": 4.0, "average": 2.5, "stdev": 1.2909944487358056}` {
		t.Errorf("stats: %s", got)
	}
}

// The chunking boundary is bitbake's: a message of 32766 characters is one
// line, one of 32767 is chunked.
func TestEncodeMessageChunking(t *testing.T) {
	for _, n := range []int{32766, 32767, 32768, 65534, 65535, 100000} {
		s := strings.Repeat("x", n-2) // plus the quotes
		enc := encodeMessage(s)
		lines := strings.Split(strings.TrimSuffix(string(enc), "\n"), "\n")
		if n < 32767 {
			if len(lines) != 1 || lines[0] != `"`+s+`"` {
				t.Errorf("%d: not one line", n)
			}
			continue
		}
		if lines[0] != `{"chunk-stream": null}` || lines[len(lines)-1] != "" {
			t.Errorf("%d: framing %q ... %q", n, lines[0], lines[len(lines)-1])
		}
		body := lines[1 : len(lines)-1]
		for i, l := range body {
			if len(l) != 32767 && i != len(body)-1 || len(l) == 0 || len(l) > 32767 {
				t.Errorf("%d: chunk %d has %d characters", n, i, len(l))
			}
		}
		if strings.Join(body, "") != `"`+s+`"` {
			t.Errorf("%d: chunks do not join back", n)
		}
		// And our decoder reads it back.
		d := decoder{r: wire.NewLineReader(bytes.NewReader(encodeMessage(object{{"k", s}})), MaxLine), maxMessage: 1 << 20}
		m, err := d.readMessage()
		var got string
		if err != nil || json.Unmarshal(m["k"], &got) != nil || got != s {
			t.Errorf("%d: round trip failed: %v", n, err)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to the server's message decoder: it
// must return messages or errors, never panic (the line and message limits
// are wire's, fuzzed there); and any string survives encoding and
// decoding.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"ping": {}}` + "\n",
		`{"get": {"taskhash": "x", "method": "m", "all": true}}` + "\n",
		"{\"chunk-stream\": null}\n{\"ping\":\n {}}\n\n",
		"{\"chunk-stream\": null}\n\n",
		"null\n{}\n[]\n\"s\"\n",
		"{\"a\": \"\\ud800\"}\n",
		"\xff\n",
		strings.Repeat("{", 100) + "\n",
	} {
		f.Add([]byte(s))
	}
	const maxLine, maxMessage = 200, 1000
	f.Fuzz(func(t *testing.T, data []byte) {
		d := decoder{r: wire.NewLineReader(bytes.NewReader(data), maxLine), maxMessage: maxMessage}
		for range 1000 {
			m, err := d.readMessage()
			if err != nil {
				break
			}
			if m == nil {
				t.Fatal("nil message without an error")
			}
		}
		if !utf8.Valid(data) {
			return
		}
		s := string(data)
		enc := encodeMessage(object{{"k", s}})
		if bytes.ContainsFunc(enc[:len(enc)-1], func(r rune) bool { return r > 0x7e }) {
			t.Fatalf("non-ASCII output %q", enc)
		}
		d = decoder{r: wire.NewLineReader(bytes.NewReader(enc), MaxLine), maxMessage: 1 << 20}
		m, err := d.readMessage()
		var got string
		if err != nil || json.Unmarshal(m["k"], &got) != nil {
			t.Fatalf("%q does not decode: %v", enc, err)
		}
		if got != s {
			t.Fatalf("round trip: got %q, want %q", got, s)
		}
	})
}

// fakeConn is a net.Conn reading from a fixed input, for fuzzing whole
// sessions without sockets.
type fakeConn struct {
	r io.Reader
	w bytes.Buffer
}

func (c *fakeConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fakeConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "", Net: "unix"} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzSession runs whole sessions of arbitrary client bytes: the server
// must not panic (serveConn recovers and logs; the log is checked) and
// must record only what bitbake would: a valid unihash, a method and a
// taskhash.
func FuzzSession(f *testing.F) {
	hello := "OEHASHEQUIV 1.1\nneeds-headers: false\n\n"
	for _, s := range []string{
		hello + `{"ping": {}}` + "\n",
		hello + `{"report": {"taskhash": "t", "method": "m", "outhash": "o", "unihash": "` + h64(1) + `"}}` + "\n",
		hello + `{"report-equiv": {"taskhash": "t", "method": "m", "unihash": "` + h64(1) + `"}}` + "\n",
		hello + `{"get": {"taskhash": "t", "method": "m", "all": true}}` + "\n",
		hello + `{"get-outhash": {"taskhash": "t", "method": "m", "outhash": "o"}}` + "\n",
		hello + "{\"get-stream\": null}\nm t\nEND\n{\"exists-stream\": null}\n" + h64(1) + "\n\n",
		hello + "{\"chunk-stream\": null}\n{\"get-stats\": null}\n\n",
		"OEHASHEQUIV 1.1\nneeds-headers: true\n\n{\"reset-stats\": {}}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newMemBackend()
		b.seed(index.Equivalence{Method: "m", Taskhash: "t", Outhash: "o", Unihash: h64(1)})
		b.addObject(h64(1))
		var log bytes.Buffer
		s := New(b, Options{MaxMessage: 4096, Logger: slog.New(slog.NewTextHandler(&log, nil))})
		s.authDelay = 0
		s.serveConn(context.Background(), &fakeConn{r: bytes.NewReader(data)})
		if strings.Contains(log.String(), "panic") {
			t.Fatal(log.String())
		}
		for _, r := range b.records() {
			if !validUnihash(r.Unihash) || r.Method == "" || r.Taskhash == "" || r.Created.IsZero() {
				t.Fatalf("recorded %+v", r)
			}
		}
		if st := s.Stats(); st.Active != 0 || st.Connections != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}
