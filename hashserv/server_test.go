package hashserv

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
)

// The equivalence rules, from bitbake's own tests (lib/hashserv/tests.py).
func TestReportRules(t *testing.T) {
	t.Run("outhash matching", func(t *testing.T) {
		// test_create_equivalent: a second task with the same outhash gets
		// the first one's unihash.
		_, cl := serveAndConnect(t, newMemBackend(), Options{})
		if u := cl.report(h64(1), h64(0xa), h64(0x100)); u != h64(0x100) {
			t.Fatalf("first report answered %s", u)
		}
		if u := cl.report(h64(2), h64(0xa), h64(0x200)); u != h64(0x100) {
			t.Fatalf("equivalent report answered %s, want %s", u, h64(0x100))
		}
		if got := cl.getStream(h64(1), h64(2), h64(3)); !reflect.DeepEqual(got, []string{h64(0x100), h64(0x100), ""}) {
			t.Fatalf("get-stream answered %q", got)
		}
	})
	t.Run("first report of a taskhash wins", func(t *testing.T) {
		// test_duplicate_taskhash
		b := newMemBackend()
		_, cl := serveAndConnect(t, b, Options{})
		cl.report(h64(1), h64(0xa), h64(0x100))
		for i, oh := range []string{h64(0xb), h64(0xc)} {
			if u := cl.report(h64(1), oh, h64(0x200+i)); u != h64(0x100) {
				t.Fatalf("report %d answered %s, want %s", i, u, h64(0x100))
			}
		}
		if got := cl.getStream(h64(1)); got[0] != h64(0x100) {
			t.Fatalf("get-stream answered %q", got)
		}
		// Each new outhash is recorded with the taskhash's unihash.
		for _, r := range b.records() {
			if r.Unihash != h64(0x100) {
				t.Errorf("recorded %+v with another unihash", r)
			}
		}
		if n := len(b.records()); n != 3 {
			t.Errorf("%d records, want 3 (one per outhash)", n)
		}
		// The same report again records nothing.
		cl.report(h64(1), h64(0xa), h64(0x100))
		cl.report(h64(1), h64(0xb), h64(0x100))
		if n := len(b.records()); n != 3 {
			t.Errorf("%d records after repeated reports, want 3", n)
		}
	})
	t.Run("diverging report race", func(t *testing.T) {
		// test_diverging_report_race
		_, cl := serveAndConnect(t, newMemBackend(), Options{})
		cl.report(h64(1), h64(0xa), h64(0x100))
		if u := cl.report(h64(2), h64(0xa), h64(2)); u != h64(0x100) {
			t.Fatalf("task 2 answered %s", u)
		}
		if u := cl.report(h64(2), h64(0xb), h64(2)); u != h64(0x100) {
			t.Fatalf("task 2 with another outhash answered %s", u)
		}
	})
	t.Run("diverging report reverse race", func(t *testing.T) {
		// test_diverging_report_reverse_race
		_, cl := serveAndConnect(t, newMemBackend(), Options{})
		cl.report(h64(1), h64(0xa), h64(0x100))
		if u := cl.report(h64(2), h64(0xb), h64(2)); u != h64(2) {
			t.Fatalf("task 2 answered %s", u)
		}
		if u := cl.report(h64(2), h64(0xa), h64(2)); u != h64(2) {
			t.Fatalf("task 2 with task 1's outhash answered %s", u)
		}
		if got := cl.getStream(h64(2)); got[0] != h64(2) {
			t.Fatalf("get-stream answered %q", got)
		}
	})
	t.Run("get_unihash_batch", func(t *testing.T) {
		// test_get_unihash_batch: a second outhash of a taskhash matches
		// later reports with the taskhash's unihash.
		_, cl := serveAndConnect(t, newMemBackend(), Options{})
		in := []struct{ th, oh, uh int }{
			{1, 0xa, 0x100},
			{1, 0xb, 0x101}, // duplicated taskhash, another outhash
			{2, 0xb, 0x102}, // equivalent to the line above: 0x100
			{3, 0xc, 0x103},
			{4, 0xd, 0x104},
			{5, 0xd, 0x105}, // equivalent: 0x104
		}
		for _, r := range in {
			cl.report(h64(r.th), h64(r.oh), h64(r.uh))
		}
		got := cl.getStream(h64(1), h64(1), h64(2), h64(3), h64(4), h64(5), h64(6))
		want := []string{h64(0x100), h64(0x100), h64(0x100), h64(0x103), h64(0x104), h64(0x104), ""}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("get-stream answered\n%q\nwant\n%q", got, want)
		}
	})
	t.Run("read-only", func(t *testing.T) {
		// test_ro_server: reports are answered, nothing is recorded,
		// report-equiv is unknown.
		b := newMemBackend()
		b.seed(index.Equivalence{Method: method, Taskhash: h64(1), Outhash: h64(0xa), Unihash: h64(0x100)})
		_, cl := serveAndConnect(t, b, Options{ReadOnly: true})
		if got := cl.getStream(h64(1)); got[0] != h64(0x100) {
			t.Fatalf("get-stream answered %q", got)
		}
		if u := cl.report(h64(2), h64(0xb), h64(0x200)); u != h64(0x200) {
			t.Fatalf("report answered %s", u)
		}
		if u := cl.report(h64(3), h64(0xa), h64(0x300)); u != h64(0x100) {
			t.Fatalf("report with a known outhash answered %s", u)
		}
		if got := cl.getStream(h64(2), h64(3)); !reflect.DeepEqual(got, []string{"", ""}) {
			t.Fatalf("read-only server recorded: %q", got)
		}
		cl.send(`{"report-equiv": {"taskhash": "` + h64(4) + `", "method": "m", "unihash": "` + h64(4) + `"}}` + "\n")
		cl.closed()
		if r := b.records(); len(r) != 0 {
			t.Errorf("read-only server recorded %v", r)
		}
	})
	t.Run("MayRecord", func(t *testing.T) {
		// a connection MayRecord refuses is served read-only; the next,
		// which it allows, records
		b := newMemBackend()
		var n atomic.Int32
		_, addr := startServer(t, b, Options{MayRecord: func(net.Conn) bool { return n.Add(1) > 1 }}, "unix")
		ro := connect(t, addr)
		if u := ro.report(h64(2), h64(0xb), h64(0x200)); u != h64(0x200) {
			t.Fatalf("report answered %s", u)
		}
		ro.send(`{"report-equiv": {"taskhash": "` + h64(4) + `", "method": "m", "unihash": "` + h64(4) + `"}}` + "\n")
		ro.closed()
		if r := b.records(); len(r) != 0 {
			t.Fatalf("a connection MayRecord refused recorded %v", r)
		}
		rw := connect(t, addr)
		rw.report(h64(2), h64(0xb), h64(0x200))
		if r := b.records(); len(r) != 1 {
			t.Fatalf("a connection MayRecord allowed recorded %v", r)
		}
	})
	t.Run("report-equiv", func(t *testing.T) {
		b := newMemBackend()
		_, cl := serveAndConnect(t, b, Options{})
		equiv := func(th, uh string) string {
			return cl.call(`{"report-equiv": {"taskhash": "` + th + `", "method": "` + method + `", "unihash": "` + uh + `"}}`)
		}
		want := `{"taskhash": "` + h64(1) + `", "method": "` + method + `", "unihash": "` + h64(0x100) + `"}` + "\n"
		if got := equiv(h64(1), h64(0x100)); got != want {
			t.Fatalf("report-equiv answered %q, want %q", got, want)
		}
		if got := equiv(h64(1), h64(0x200)); got != want {
			t.Fatalf("second report-equiv answered %q, want %q", got, want)
		}
		// A taskhash with no outhash has no full row: bitbake's join
		// answers null.
		if got := cl.call(`{"get": {"taskhash": "` + h64(1) + `", "method": "` + method + `", "all": true}}`); got != "null\n" {
			t.Fatalf("get all answered %q", got)
		}
		if got := cl.call(`{"get": {"taskhash": "` + h64(1) + `", "method": "` + method + `", "all": false}}`); got != want {
			t.Fatalf("get answered %q", got)
		}
		// A later report keeps the unihash and records the outhash.
		if u := cl.report(h64(1), h64(0xa), h64(0x300)); u != h64(0x100) {
			t.Fatalf("report answered %s", u)
		}
		if u := cl.report(h64(2), h64(0xa), h64(0x400)); u != h64(0x100) {
			t.Fatalf("report matching the outhash answered %s", u)
		}
		if r := b.records(); len(r) != 3 || r[0].Outhash != "" || r[1].Outhash != h64(0xa) {
			t.Errorf("records %+v", r)
		}
	})
}

func TestInvalidUnihash(t *testing.T) {
	// test_report_rejects_invalid_unihash and
	// test_equivreport_rejects_invalid_unihash, plus a missing unihash and
	// other types.
	b := newMemBackend()
	_, addr := startServer(t, b, Options{}, "tcp")
	const want = `{"invoke-error": {"message": "Invalid unihash"}}` + "\n"
	for _, uh := range []string{
		`"${@os.system('true')}"`, `"` + strings.Repeat("a", 63) + `"`, `"` + strings.Repeat("a", 65) + `"`,
		`"` + strings.Repeat("A", 64) + `"`, `null`, `42`, `["` + h64(1) + `"]`, `"` + h64(1) + `\n"`,
	} {
		for _, cmd := range []string{"report", "report-equiv"} {
			cl := connect(t, addr)
			got := cl.call(`{"` + cmd + `": {"taskhash": "` + h64(1) + `", "method": "m", "outhash": "` + h64(2) + `", "unihash": ` + uh + `}}`)
			if got != want {
				t.Errorf("%s with unihash %s answered %q", cmd, uh, got)
			}
			cl.closed()
		}
	}
	cl := connect(t, addr)
	if got := cl.call(`{"report": {"taskhash": "` + h64(1) + `", "method": "m", "outhash": "` + h64(2) + `"}}`); got != want {
		t.Errorf("report without unihash answered %q", got)
	}
	if r := b.records(); len(r) != 0 {
		t.Errorf("recorded %v", r)
	}
}

func TestGetFull(t *testing.T) {
	b := newMemBackend()
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	_, cl := serveAndConnect(t, b, Options{Now: func() time.Time { return created }})
	r := cl.callJSON(map[string]any{"report": map[string]any{
		"taskhash": h64(1), "method": method, "outhash": h64(0xa), "unihash": h64(0x100),
		"owner": "me", "PN": "zlib", "PV": "1.3", "PR": "r0", "task": "populate_sysroot", "outhash_siginfo": "x y z"}})
	if r.(map[string]any)["unihash"] != h64(0x100) {
		t.Fatal(r)
	}
	id := row(index.Equivalence{Method: method, Taskhash: h64(1), Outhash: h64(0xa)}, false)[0].value
	rest := `"method": "do_populate_sysroot", "taskhash": "` + h64(1) + `", "outhash": "` + h64(0xa) +
		`", "created": "2026-01-02T03:04:05+00:00", "owner": "me", "PN": "zlib", "PV": "1.3", "PR": "r0", "task": "populate_sysroot", "outhash_siginfo": null`
	full := `{"id": ` + string(appendJSON(nil, id)) + `, ` + rest + `, "unihash": "` + h64(0x100) + `", "gc_mark": ""}` + "\n"
	outOnly := `{"id": ` + string(appendJSON(nil, id)) + `, ` + rest + "}\n"
	for _, tc := range []struct{ msg, want string }{
		{`{"get": {"taskhash": "` + h64(1) + `", "method": "` + method + `", "all": true}}`, full},
		{`{"get": {"taskhash": "` + h64(1) + `", "method": "` + method + `", "all": 1}}`, full},
		{`{"get": {"taskhash": "` + h64(1) + `", "method": "` + method + `"}}`, `{"taskhash": "` + h64(1) + `", "method": "` + method + `", "unihash": "` + h64(0x100) + `"}` + "\n"},
		{`{"get": {"taskhash": "` + h64(2) + `", "method": "` + method + `", "all": true}}`, "null\n"},
		{`{"get": {"taskhash": "` + h64(1) + `", "method": "other", "all": false}}`, "null\n"},
		{`{"get-outhash": {"outhash": "` + h64(0xa) + `", "taskhash": "` + h64(9) + `", "method": "` + method + `", "with_unihash": true}}`, full},
		{`{"get-outhash": {"outhash": "` + h64(0xa) + `", "taskhash": "` + h64(9) + `", "method": "` + method + `"}}`, full},
		{`{"get-outhash": {"outhash": "` + h64(0xa) + `", "taskhash": "` + h64(9) + `", "method": "` + method + `", "with_unihash": false}}`, outOnly},
		{`{"get-outhash": {"outhash": "` + h64(0xb) + `", "taskhash": "` + h64(9) + `", "method": "` + method + `"}}`, "null\n"},
	} {
		if got := cl.call(tc.msg); got != tc.want {
			t.Errorf("%s answered\n%s\nwant\n%s", tc.msg, got, tc.want)
		}
	}
	if r := b.records(); len(r) != 1 || r[0] != (index.Equivalence{Method: method, Taskhash: h64(1), Outhash: h64(0xa), Unihash: h64(0x100),
		Owner: "me", PN: "zlib", PV: "1.3", PR: "r0", Task: "populate_sysroot", Created: created}) {
		t.Errorf("recorded %+v", r)
	}
}

func TestCommands(t *testing.T) {
	b := newMemBackend()
	b.addObject(h64(0x100))
	s, addr := startServer(t, b, Options{}, "unix")
	s.authDelay = 10 * time.Millisecond
	for _, tc := range []struct {
		name, msg, want string // want "" means: connection closed, no answer
	}{
		{"ping", `{"ping": {}}`, `{"alive": true}`},
		{"ping null", `{"ping": null}`, `{"alive": true}`},
		{"backfill-wait", `{"backfill-wait": null}`, `{"tasks": 0}`},
		{"get-db-query-columns", `{"get-db-query-columns": {}}`, `{"columns": ["PN", "PR", "PV", "gc_mark", "method", "outhash", "outhash_siginfo", "owner", "task", "taskhash", "unihash"]}`},
		{"dispatch order", `{"get-stats": null, "ping": {}}`, `{"alive": true}`},
		{"extra keys", `{"x": 1, "ping": {}}`, `{"alive": true}`},
		{"auth", `{"auth": {"username": "bob", "token": "t"}}`, `{"invoke-error": {"message": "Unable to authenticate as bob"}}`},
		{"get-user", `{"get-user": {}}`, `{"invoke-error": {"message": "Anonymous user is not allowed to access permissions(s) @user-admin"}}`},
		{"new-user", `{"new-user": {"username": "x", "permissions": []}}`, `{"invoke-error": {"message": "Anonymous user is not allowed to access permissions(s) @user-admin"}}`},
		{"remove", `{"remove": {"where": {"taskhash": "x"}}}`, `{"invoke-error": {"message": "remove is not supported by the sstatefs hash equivalence server: its equivalences are kept in the sstate store's index"}}`},
		{"gc-mark-stream", `{"gc-mark-stream": null}`, `{"invoke-error": {"message": "gc-mark-stream is not supported by the sstatefs hash equivalence server: its equivalences are kept in the sstate store's index"}}`},
		{"unknown command", `{"frobnicate": {}}`, ""},
		{"empty object", `{}`, ""},
		{"null", `null`, ""},
		{"list", `["ping"]`, ""},
		{"string", `"ping"`, ""},
		{"malformed", `{"ping": `, ""},
		{"get without method", `{"get": {"taskhash": "x"}}`, ""},
		{"get with a number", `{"get": {"taskhash": 1, "method": "m"}}`, ""},
		{"get with null", `{"get": null}`, ""},
		{"report without outhash", `{"report": {"taskhash": "x", "method": "m", "unihash": "` + h64(1) + `"}}`, ""},
		{"report with empty taskhash", `{"report": {"taskhash": "", "method": "m", "outhash": "o", "unihash": "` + h64(1) + `"}}`, ""},
		{"report with a huge PN", `{"report": {"taskhash": "t", "method": "m", "outhash": "o", "unihash": "` + h64(1) + `", "PN": "` + strings.Repeat("p", 2000) + `"}}`, ""},
		{"report with a space in taskhash", `{"report": {"taskhash": "t t", "method": "m", "outhash": "o", "unihash": "` + h64(1) + `"}}`, ""},
		{"report with a newline in PV", `{"report": {"taskhash": "t", "method": "m", "outhash": "o", "unihash": "` + h64(1) + `", "PV": "1\n2"}}`, ""},
		{"report-equiv with an empty method", `{"report-equiv": {"taskhash": "t", "method": "", "unihash": "` + h64(1) + `"}}`, ""},
		{"report with a numeric PN", `{"report": {"taskhash": "t", "method": "m", "outhash": "o", "unihash": "` + h64(1) + `", "PN": 5}}`, ""},
		{"auth without token", `{"auth": {"username": "bob"}}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := connect(t, addr)
			cl.send(tc.msg + "\n")
			if tc.want == "" {
				cl.closed()
				return
			}
			if got := cl.line(); got != tc.want+"\n" {
				t.Fatalf("answered %q, want %q", got, tc.want)
			}
			if strings.Contains(tc.want, "invoke-error") {
				cl.closed()
				return
			}
			cl.ping()
		})
	}
	if r := b.records(); len(r) != 0 {
		t.Errorf("recorded %v", r)
	}
	st := s.Stats()
	if st.ByCommand["ping"] == 0 || st.ByCommand[unrecognized] != 2 || st.Errors == 0 || st.Connections == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestStreams(t *testing.T) {
	b := newMemBackend()
	b.seed(index.Equivalence{Method: method, Taskhash: h64(1), Outhash: h64(0xa), Unihash: h64(0x100)})
	b.seed(index.Equivalence{Method: method, Taskhash: h64(2), Outhash: h64(0xb), Unihash: "not-a-unihash"})
	b.addObject(h64(0x100))
	b.addObject("not-a-unihash")
	s, addr := startServer(t, b, Options{}, "tcp")

	cl := connect(t, addr)
	cl.send(`{"get-stream": null}` + "\n")
	if l := cl.line(); l != "\"ok\"\n" {
		t.Fatalf("get-stream answered %q", l)
	}
	// Pipelined, as bitbake's batches are; tabs and trailing \r are
	// whitespace to bitbake too. A record with an invalid unihash is not
	// answered (bitbake would abort the build on it).
	cl.send(method + " " + h64(1) + "\n" + method + "\t" + h64(1) + " \r\n" + method + " " + h64(2) + "\n" + method + " " + h64(3) + "\nEND\n")
	for i, want := range []string{h64(0x100) + "\n", h64(0x100) + "\n", "\n", "\n", "ok\n"} {
		if got := cl.line(); got != want {
			t.Fatalf("line %d: got %q, want %q", i, got, want)
		}
	}
	cl.send(`{"exists-stream": null}` + "\n")
	if l := cl.line(); l != "\"ok\"\n" {
		t.Fatalf("exists-stream answered %q", l)
	}
	cl.send(h64(0x100) + "\n" + h64(0x101) + "\nnot-a-unihash\n" + h64(0x100) + " x\n\n")
	for i, want := range []string{"true\n", "false\n", "false\n", "false\n", "ok\n"} {
		if got := cl.line(); got != want {
			t.Fatalf("exists line %d: got %q, want %q", i, got, want)
		}
	}
	// Back in normal mode.
	cl.ping()
	// get-stats counts the normal-mode commands and the stream lines
	// with END, as bitbake does: 4 + 1 get-stream lines, 4 exists lines
	// (the empty line is not counted), 1 ping.
	var st struct{ Requests map[string]any }
	if err := json.Unmarshal([]byte(cl.call(`{"get-stats": null}`)), &st); err != nil {
		t.Fatal(err)
	}
	if n := st.Requests["num"]; n != 10.0 {
		t.Errorf("get-stats num = %v, want 10", n)
	}
	if l := cl.call(`{"reset-stats": null}`); !strings.HasPrefix(l, `{"requests": {"num": 11, `) {
		t.Errorf("reset-stats answered %q", l)
	}
	// As in bitbake, the reset-stats request itself is counted after
	// the reset; one sample has no deviation (Python's int 0).
	if l := cl.call(`{"get-stats": null}`); !strings.HasPrefix(l, `{"requests": {"num": 1, "total_time": `) || !strings.HasSuffix(l, `, "stdev": 0}}`+"\n") {
		t.Errorf("get-stats after reset answered %q", l)
	}
	if st := s.Stats(); st.StreamLines != 8 || st.ByCommand["get-stream"] != 1 || st.Hits != 2 || st.Misses != 2 {
		t.Errorf("stats %+v", st)
	}

	// A get-stream line that is not two words closes the connection.
	cl = connect(t, addr)
	cl.send(`{"get-stream": null}` + "\n")
	cl.line()
	cl.send("one two three\n")
	cl.closed()
}

func TestHandshake(t *testing.T) {
	_, addr := startServer(t, newMemBackend(), Options{}, "unix")
	for _, tc := range []struct {
		name, hello string
		ok          bool
	}{
		{"bitbake", "OEHASHEQUIV 1.1\nneeds-headers: false\n\n", true},
		{"no headers", "OEHASHEQUIV 1.1\n\n", true},
		{"extra headers", "OEHASHEQUIV 1.1\nX-Foo: bar: baz\nneeds-headers: false\n\n", true},
		{"CRLF", "OEHASHEQUIV 1.1\r\nneeds-headers: false\r\n\r\n", true},
		{"version 1.0.1", "OEHASHEQUIV 1.0.1\n\n", true},
		{"version 1.0", "OEHASHEQUIV 1.0\n\n", false},
		{"version 1.2", "OEHASHEQUIV 1.2\n\n", false},
		{"version 2", "OEHASHEQUIV 2\n\n", false},
		{"version x", "OEHASHEQUIV 1.x\n\n", false},
		{"other protocol", "PRSERVICE 1.1\n\n", false},
		{"three words", "OEHASHEQUIV 1.1 x\n\n", false},
		{"empty", "\n", false},
		{"header without colon", "OEHASHEQUIV 1.1\nneeds-headers\n\n", false},
		{"too many headers", "OEHASHEQUIV 1.1\n" + strings.Repeat("a: b\n", 100) + "\n", false},
		{"binary", "\x00\xff\xfe\n\n", false},
		{"HTTP", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newClient(t, addr)
			cl.send(tc.hello)
			if !tc.ok {
				cl.closed()
				return
			}
			cl.ping()
		})
	}
	t.Run("needs-headers", func(t *testing.T) {
		cl := newClient(t, addr)
		cl.send("OEHASHEQUIV 1.1\nneeds-headers: true\n\n")
		// The server has no headers: the block is its closing empty line.
		if got := cl.line(); got != "\n" {
			t.Fatalf("header block %q", got)
		}
		cl.ping()
	})
}

func TestRecordFailure(t *testing.T) {
	// reportFails sends a report to a server of b with opt and checks that
	// it closes the connection without an answer and counts an error.
	reportFails := func(t *testing.T, b *memBackend, opt Options) {
		t.Helper()
		s, cl := serveAndConnect(t, b, opt)
		cl.send(`{"report": {"taskhash": "` + h64(1) + `", "method": "m", "outhash": "` + h64(2) + `", "unihash": "` + h64(3) + `"}}` + "\n")
		cl.closed()
		if st := s.Stats(); st.Records != 0 || st.Errors != 1 {
			t.Errorf("stats %+v", st)
		}
	}
	t.Run("error", func(t *testing.T) {
		// No answer: bitbake's client retries, then warns, as it does when
		// its own server's database fails.
		b := newMemBackend()
		b.recordErr = errors.New("store is down")
		reportFails(t, b, Options{})
	})
	t.Run("refused", func(t *testing.T) {
		b := newMemBackend()
		b.recordErr = fmt.Errorf("index: %w: PN too long", ErrInvalidRecord)
		reportFails(t, b, Options{})
	})
	t.Run("timeout", func(t *testing.T) {
		b := newMemBackend()
		b.block = make(chan struct{})
		reportFails(t, b, Options{RecordTimeout: 50 * time.Millisecond})
	})
}

func TestChunked(t *testing.T) {
	b := newMemBackend()
	_, addr := startServer(t, b, Options{}, "unix")

	t.Run("client to server", func(t *testing.T) {
		// A report carrying a large outhash_siginfo, chunked as bitbake's
		// client does: 32767-character lines, then an empty line.
		siginfo := strings.Repeat("0123456789abcdef", 32*1024*4/16)
		msg, _ := json.Marshal(map[string]any{"report": map[string]any{
			"taskhash": h64(1), "method": method, "outhash": h64(0xa), "unihash": h64(0x100), "outhash_siginfo": siginfo}})
		if len(msg) < 4*32*1024 {
			t.Fatal("message too short")
		}
		cl := connect(t, addr)
		cl.send(chunk(string(msg)))
		want := `{"taskhash": "` + h64(1) + `", "method": "` + method + `", "unihash": "` + h64(0x100) + `"}` + "\n"
		if got := cl.line(); got != want {
			t.Fatalf("chunked report answered %q", got)
		}
		// Chunking a short message is allowed too, and trailing spaces at
		// chunk ends are kept.
		get := `{"get":    {"taskhash": "` + h64(1) + `",   "method": "` + method + `"}}`
		cl.send("{\"chunk-stream\": null}\n" + get[:7] + "\n" + get[7:40] + "\n" + get[40:] + "\n\n")
		if got := cl.line(); got != `{"taskhash": "`+h64(1)+`", "method": "`+method+`", "unihash": "`+h64(0x100)+`"}`+"\n" {
			t.Fatalf("chunked get answered %q", got)
		}
	})

	t.Run("server to client", func(t *testing.T) {
		// Only a record with long fields gives a long answer; the index
		// could hold one.
		pn := strings.Repeat("n", 40000)
		b.seed(index.Equivalence{Method: method, Taskhash: h64(2), Outhash: h64(0xb), Unihash: h64(0x200), PN: pn})
		cl := connect(t, addr)
		cl.send(`{"get": {"taskhash": "` + h64(2) + `", "method": "` + method + `", "all": true}}` + "\n")
		if l := cl.line(); l != "{\"chunk-stream\": null}\n" {
			t.Fatalf("first line %q", l)
		}
		var whole strings.Builder
		for {
			l := cl.line()
			if l == "\n" {
				break
			}
			if len(l) > 32767+1 {
				t.Fatalf("chunk of %d characters", len(l)-1)
			}
			whole.WriteString(strings.TrimSuffix(l, "\n"))
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(whole.String()), &got); err != nil {
			t.Fatal(err)
		}
		if got["PN"] != pn || got["unihash"] != h64(0x200) {
			t.Fatalf("chunked answer %.200s", whole.String())
		}
		cl.ping()
	})

	t.Run("larger than MaxMessage", func(t *testing.T) {
		_, cl := serveAndConnect(t, b, Options{MaxMessage: 100 << 10})
		msg, _ := json.Marshal(map[string]any{"report": map[string]any{
			"taskhash": h64(3), "method": method, "outhash": h64(0xc), "unihash": h64(0x300), "outhash_siginfo": strings.Repeat("x", 200<<10)}})
		cl.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		cl.c.Write([]byte(chunk(string(msg)))) // the server may close before all is sent
		cl.closed()
		if _, ok := b.Get(method, h64(3)); ok {
			t.Fatal("recorded an oversized report")
		}
	})
}

// chunk frames a message as bitbake's chunkify does, whatever its length.
func chunk(msg string) string {
	var s strings.Builder
	s.WriteString("{\"chunk-stream\": null}\n")
	for len(msg) > 0 {
		n := min(len(msg), 32767)
		s.WriteString(msg[:n] + "\n")
		msg = msg[n:]
	}
	s.WriteString("\n")
	return s.String()
}

// Reports of unrelated hashes are recorded concurrently; a report sharing
// an outhash with one being recorded waits for it and matches it.
func TestReportLocking(t *testing.T) {
	b := newMemBackend()
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	b.hook = func(e index.Equivalence) {
		if e.Taskhash == h64(1) {
			entered <- struct{}{}
			<-release
		}
	}
	s, addr := startServer(t, b, Options{}, "unix")
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	stripe := func(kind string, h string) uint64 {
		return maphash.String(s.locks.seed, method+"\x00"+kind+h) % uint64(len(s.locks.stripes))
	}
	// An unrelated report whose hashes fall in other stripes.
	th, oh := 2, 0xb
	for stripe("t", h64(th)) == stripe("t", h64(1)) || stripe("t", h64(th)) == stripe("o", h64(0xa)) {
		th++
	}
	for stripe("o", h64(oh)) == stripe("t", h64(1)) || stripe("o", h64(oh)) == stripe("o", h64(0xa)) {
		oh++
	}
	dialReport := func(th, oh, uh string, out chan<- string) {
		c, err := net.Dial("unix", strings.TrimPrefix(addr, "unix://"))
		if err != nil {
			out <- err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "OEHASHEQUIV 1.1\n\n{\"report\": {\"taskhash\": %q, \"method\": %q, \"outhash\": %q, \"unihash\": %q}}\n", th, method, oh, uh)
		l, _ := bufio.NewReader(c).ReadString('\n')
		var r map[string]string
		json.Unmarshal([]byte(l), &r)
		out <- r["unihash"]
	}

	a := make(chan string, 1)
	go dialReport(h64(1), h64(0xa), h64(0x100), a)
	<-entered // A is inside Record

	if u := connect(t, addr).report(h64(th), h64(oh), h64(0x200)); u != h64(0x200) {
		t.Fatalf("unrelated report answered %s", u)
	}
	c := make(chan string, 1)
	go dialReport(h64(3), h64(0xa), h64(0x300), c)
	select {
	case u := <-c:
		t.Fatalf("report with the same outhash answered %s while the first was being recorded", u)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if u := <-a; u != h64(0x100) {
		t.Fatalf("first report answered %s", u)
	}
	if u := <-c; u != h64(0x100) {
		t.Fatalf("equivalent report answered %s, want the first's %s", u, h64(0x100))
	}
}
