package hashserv

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
)

// The transcript of the real bitbake-hashserv (compat/), beside the
// repository.
const transcriptPath = "../../shared/compat/hashserv-transcript.txt"

// step is one line of a transcript: bytes the client sent, or bytes the
// server answered (eof: the server closed the connection).
type step struct {
	send bool
	data []byte
	eof  bool
}

func readTranscript(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(transcriptPath)
	if os.IsNotExist(err) {
		t.Skipf("%s not found", transcriptPath)
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// section returns the text between the line starting with from and the
// next line starting with "## Part" (or the end).
func section(t *testing.T, text, from string) string {
	t.Helper()
	i := strings.Index(text, "\n"+from)
	if i < 0 {
		t.Fatalf("transcript has no %q", from)
	}
	rest := text[i+1:]
	if j := strings.Index(rest[1:], "\n## Part"); j >= 0 {
		rest = rest[:j+1]
	}
	return rest
}

var (
	pyStep     = regexp.MustCompile(`^(C->S|S->C) b'((?:[^'\\]|\\.)*)'( \(EOF\))?`)
	straceStep = regexp.MustCompile(`(sendto|recvfrom)\(\d+, "((?:[^"\\]|\\.)*)"`)
)

// rawSteps parses the "C->S b'...'" / "S->C b'...'" lines of Part C.
func rawSteps(t *testing.T, sec string) []step {
	t.Helper()
	var steps []step
	for _, l := range strings.Split(sec, "\n") {
		m := pyStep.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		data := unescape(t, m[2])
		steps = append(steps, step{send: m[1] == "C->S", data: data, eof: m[3] != "" && len(data) == 0})
	}
	if len(steps) == 0 {
		t.Fatal("no steps in transcript section")
	}
	return steps
}

// straceSteps parses the sendto/recvfrom lines of Parts A and B.
func straceSteps(t *testing.T, sec string) []step {
	t.Helper()
	var steps []step
	for _, l := range strings.Split(sec, "\n") {
		m := straceStep.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		steps = append(steps, step{send: m[1] == "sendto", data: unescape(t, m[2])})
	}
	if len(steps) == 0 {
		t.Fatal("no steps in transcript section")
	}
	return steps
}

// unescape decodes the backslash escapes of a Python bytes literal or an
// strace string.
func unescape(t *testing.T, s string) []byte {
	t.Helper()
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		i++
		switch s[i] {
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case '\\', '\'', '"':
			b = append(b, s[i])
		case 'x':
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				t.Fatalf("bad escape in %q", s)
			}
			b = append(b, byte(v))
			i += 2
		default:
			t.Fatalf("unknown escape \\%c in %q", s[i], s)
		}
	}
	return b
}

// replay runs steps against addr, comparing every answer byte for byte.
// normalize, if set, rewrites an expected and an actual answer before
// they are compared (for what is not deterministic).
func replay(t *testing.T, addr string, steps []step, normalize func(expected, got []byte) ([]byte, []byte)) {
	t.Helper()
	cl := newClient(t, addr)
	for i, s := range steps {
		switch {
		case s.send:
			cl.send(string(s.data))
		case s.eof:
			cl.closed()
		default:
			var got []byte
			if bytes.HasPrefix(s.data, []byte(`{"requests": `)) {
				// get-stats: timings are not deterministic, the shape is.
				got = []byte(cl.line())
				sameShape(t, s.data, got)
				continue
			}
			// Every answer is whole lines.
			for range bytes.Count(s.data, []byte("\n")) {
				got = append(got, cl.line()...)
			}
			want := s.data
			if normalize != nil {
				want, got = normalize(want, got)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("step %d: server answered\n%s\nbitbake answered\n%s", i, got, want)
			}
		}
	}
}

// sameShape checks that two JSON lines have the same keys, in the same
// order, with values of the same JSON types.
func sameShape(t *testing.T, want, got []byte) {
	t.Helper()
	keys := regexp.MustCompile(`"[a-z_]+":`)
	if w, g := keys.FindAll(want, -1), keys.FindAll(got, -1); !reflect.DeepEqual(w, g) {
		t.Fatalf("keys differ:\n got %s\nwant %s", got, want)
	}
	var w, g map[string]map[string]any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%q: %v", got, err)
	}
	for k, v := range w["requests"] {
		if reflect.TypeOf(g["requests"][k]) != reflect.TypeOf(v) {
			t.Errorf("requests.%s is %v, bitbake's %v", k, g["requests"][k], v)
		}
	}
	if n, _ := g["requests"]["num"].(float64); n < 1 {
		t.Errorf("get-stats counted %v requests", n)
	}
}

// TestTranscriptRaw replays Part C (unix socket) and Part C' (TCP) of the
// transcript: the raw client's exchange with the real bitbake-hashserv.
func TestTranscriptRaw(t *testing.T) {
	text := readTranscript(t)
	for _, tc := range []struct{ part, network string }{
		{"## Part C:", "unix"},
		{"## Part C':", "tcp"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			steps := rawSteps(t, section(t, text, tc.part))
			b := newMemBackend()
			// "this taskhash was already known from an earlier report",
			// and its object exists.
			b.seed(index.Equivalence{Method: method, Taskhash: h64(0x5000), Outhash: h64(0xcccc), Unihash: h64(0x6000),
				PN: "rawprobe", PV: "1.0", PR: "r0", Task: "populate_sysroot", Created: time.Now()})
			b.addObject(h64(0x6000))
			_, addr := startServer(t, b, Options{}, tc.network)
			replay(t, addr, steps, nil)
			if r := b.records(); len(r) != 0 {
				t.Errorf("recorded %v; the reported outhash was known", r)
			}
		})
	}
}

// TestTranscriptClient replays Parts A and B: bitbake-hashclient's get
// with all after the harness's report.py, and the client API's report and
// get-stream.
func TestTranscriptClient(t *testing.T) {
	text := readTranscript(t)
	created := time.Date(2026, 11, 25, 21, 46, 31, 437029000, time.UTC)
	b := newMemBackend()
	_, addr := startServer(t, b, Options{Now: func() time.Time { return created }}, "unix")

	// report.py: three taskhashes with one outhash; all get the first
	// one's unihash.
	cl := connect(t, addr)
	for i := range 3 {
		r := cl.callJSON(map[string]any{"report": map[string]any{
			"owner": "probe", "taskhash": h64(0x1000 + i), "method": method, "outhash": h64(0xaaaa), "unihash": h64(0x2000 + i)}})
		if got := r.(map[string]any)["unihash"]; got != h64(0x2000) {
			t.Fatalf("report %d answered unihash %v, want the first report's %s", i, got, h64(0x2000))
		}
	}

	id := regexp.MustCompile(`^\{"id": \d+, `)
	replay(t, addr, straceSteps(t, section(t, text, "## Part A:")), func(want, got []byte) ([]byte, []byte) {
		// id is bitbake's sqlite row number; ours is a hash (see row).
		if id.Match(want) {
			if !id.Match(got) {
				t.Errorf("answer has no id: %s", got)
			}
			return id.ReplaceAll(want, []byte(`{"id": N, `)), id.ReplaceAll(got, []byte(`{"id": N, `))
		}
		return want, got
	})
	replay(t, addr, straceSteps(t, section(t, text, "## Part B:")), nil)
}
