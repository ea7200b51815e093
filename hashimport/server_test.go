package hashimport

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/hashserv/wire"
	"github.com/sstatefs/sstatefs/index"
)

// fakeConn is the server side of one connection to a fake hash equivalence
// server, speaking the protocol as bitbake's does.
type fakeConn struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func (c *fakeConn) line() (string, bool) {
	s, err := c.r.ReadString('\n')
	if err != nil {
		return "", false
	}
	return strings.TrimSuffix(s, "\n"), true
}

func (c *fakeConn) send(s string) {
	c.nc.Write([]byte(s + "\n"))
}

// sendMessage sends msg as bitbake's server does: chunked from 32 KiB on.
func (c *fakeConn) sendMessage(msg any) {
	b, err := json.Marshal(msg)
	if err != nil {
		c.t.Error(err)
		return
	}
	c.nc.Write(wire.AppendMessage(nil, b))
}

// handshake reads the protocol line and headers and checks them.
func (c *fakeConn) handshake() bool {
	proto, ok := c.line()
	if !ok {
		return false
	}
	if proto != "OEHASHEQUIV 1.1" {
		c.t.Errorf("protocol line %q", proto)
	}
	for {
		h, ok := c.line()
		if !ok {
			return false
		}
		if h == "" {
			return true
		}
		if h != "needs-headers: false" {
			c.t.Errorf("header %q", h)
		}
	}
}

// message reads one JSON message, joining a chunked one.
func (c *fakeConn) message() (map[string]json.RawMessage, bool) {
	l, ok := c.line()
	if !ok {
		return nil, false
	}
	if l == `{"chunk-stream": null}` || l == `{"chunk-stream":null}` {
		var joined strings.Builder
		for {
			part, ok := c.line()
			if !ok {
				return nil, false
			}
			if part == "" {
				break
			}
			joined.WriteString(part)
		}
		l = joined.String()
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(l), &m); err != nil {
		c.t.Errorf("message %q: %v", l, err)
		return nil, false
	}
	return m, true
}

// startFake serves handle on a unix socket (network "unix") or on
// 127.0.0.1 (network "tcp") and returns the address to give FromServer.
func startFake(t *testing.T, network string, handle func(c *fakeConn)) string {
	t.Helper()
	var ln net.Listener
	var addr string
	var err error
	if network == "unix" {
		sock := filepath.Join(t.TempDir(), "hs.sock")
		ln, err = net.Listen("unix", sock)
		addr = "unix://" + sock
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if ln != nil {
			addr = ln.Addr().String()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				handle(&fakeConn{t: t, nc: nc, r: bufio.NewReader(nc)})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, nc := range conns {
			nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return addr
}

// fakeDB is what a fake server knows: full rows by pair, and unihashes of
// pairs without an outhash row.
type fakeDB struct {
	rows     map[MethodTaskhash]map[string]any
	unihash  map[MethodTaskhash]string
	requests int // get and get-stream lookups, counted by the server
	mu       sync.Mutex
}

// serve answers like bitbake-hashserv: ping, get, get-stream, get-db-usage.
func (db *fakeDB) serve(c *fakeConn) {
	if !c.handshake() {
		return
	}
	for {
		m, ok := c.message()
		if !ok {
			return
		}
		switch {
		case m["ping"] != nil:
			c.sendMessage(map[string]bool{"alive": true})
		case m["get"] != nil:
			var args getArgs
			if err := json.Unmarshal(m["get"], &args); err != nil || !args.All {
				c.t.Errorf("get %s: %v", m["get"], err)
			}
			db.mu.Lock()
			db.requests++
			row := db.rows[MethodTaskhash{args.Method, args.Taskhash}]
			db.mu.Unlock()
			if row == nil {
				c.send("null")
			} else {
				c.sendMessage(row)
			}
		case m["get-stream"] != nil:
			c.sendMessage("ok")
			for {
				l, ok := c.line()
				if !ok {
					return
				}
				if l == "END" {
					c.send("ok")
					break
				}
				f := strings.Fields(l)
				if len(f) != 2 {
					c.t.Errorf("get-stream line %q", l)
					return
				}
				db.mu.Lock()
				db.requests++
				u := db.unihash[MethodTaskhash{f[0], f[1]}]
				db.mu.Unlock()
				c.send(u)
			}
		case m["get-db-usage"] != nil:
			c.sendMessage(map[string]any{"usage": map[string]any{
				"unihashes_v3": map[string]int{"rows": 5},
				"outhashes_v2": map[string]int{"rows": 4},
				"users":        map[string]int{"rows": 0},
			}})
		default:
			c.sendMessage(map[string]any{"invoke-error": map[string]string{"message": fmt.Sprintf("Unrecognized command %v", m)}})
			return
		}
	}
}

// row is a get all=true answer as bitbake-hashserv gives it.
func row(method, taskhash, outhash, unihash, created string, extra map[string]any) map[string]any {
	r := map[string]any{
		"id": 1, "method": method, "taskhash": taskhash, "outhash": outhash, "created": created,
		"owner": nil, "PN": nil, "PV": nil, "PR": nil, "task": nil, "outhash_siginfo": nil,
		"unihash": unihash, "gc_mark": "",
	}
	for k, v := range extra {
		r[k] = v
	}
	return r
}

func TestFromServerFake(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			db := &fakeDB{
				rows: map[MethodTaskhash]map[string]any{
					{mSysroot, h(1)}: row(mSysroot, h(1), h(0xa1), h(0x101), "2026-11-25T21:46:31.437029+00:00",
						map[string]any{"owner": "probe", "PN": "zlib", "PV": "1.3.1", "PR": "r0", "task": "populate_sysroot"}),
					// Over 32 KiB: the answer comes chunked.
					{mPackage, h(2)}: row(mPackage, h(2), h(0xa2), h(0x102), "2026-11-25T21:46:32+00:00",
						map[string]any{"outhash_siginfo": strings.Repeat("siginfo ", 10000)}),
					// Not a valid unihash: skipped.
					{mSysroot, h(3)}: row(mSysroot, h(3), h(0xa3), "abc", "2026-11-25T21:46:33+00:00", nil),
				},
				unihash: map[MethodTaskhash]string{
					{mSysroot, h(4)}: h(0x104), // report-equiv: no outhash row
				},
			}
			// Enough pairs for two batches, each with misses.
			pairs := []MethodTaskhash{{mSysroot, h(1)}, {mPackage, h(2)}, {mSysroot, h(3)}, {mSysroot, h(4)},
				{mSysroot, h(5)},  // unknown
				{mSysroot, "XYZ"}, // invalid: not asked
				{"do it", h(6)},   // invalid method: not asked
				{mSysroot, h(1)},  // repeated: read once
			}
			want := []index.Equivalence{
				{Method: mSysroot, Taskhash: h(1), Outhash: h(0xa1), Unihash: h(0x101), PN: "zlib", PV: "1.3.1", PR: "r0", Task: "populate_sysroot", Owner: "probe",
					Created: utc("2026-11-25T21:46:31.437029Z")},
				{Method: mPackage, Taskhash: h(2), Outhash: h(0xa2), Unihash: h(0x102), Created: utc("2026-11-25T21:46:32Z")},
				{Method: mSysroot, Taskhash: h(4), Unihash: h(0x104)},
			}
			for i := 0; i < batchSize; i++ {
				n := 0x1000 + i
				db.rows[MethodTaskhash{mSysroot, h(n)}] = row(mSysroot, h(n), h(n), h(n), "2026-11-26T00:00:00+00:00", nil)
				pairs = append(pairs, MethodTaskhash{mSysroot, h(n)})
				want = append(want, index.Equivalence{Method: mSysroot, Taskhash: h(n), Outhash: h(n), Unihash: h(n), Created: utc("2026-11-26T00:00:00Z")})
			}
			db.unihash[MethodTaskhash{mPackage, h(0x2000)}] = h(0x2000)
			pairs = append(pairs, MethodTaskhash{mPackage, h(0x2000)})
			want = append(want, index.Equivalence{Method: mPackage, Taskhash: h(0x2000), Unihash: h(0x2000)})

			addr := startFake(t, network, db.serve)
			var got []index.Equivalence
			res, err := FromServer(context.Background(), addr, ServerOptions{Pairs: pairs, Timeout: 10 * time.Second}, collect(&got))
			if err != nil {
				t.Fatal(err)
			}
			sameEquivalences(t, got, want)
			if res.Read != len(want) || res.Skipped != 4 {
				t.Errorf("Read %d Skipped %d, want %d 4; problems:\n%s", res.Read, res.Skipped, len(want), strings.Join(res.Problems, "\n"))
			}
			for _, p := range []string{
				`pair (do_populate_sysroot XYZ): taskhash "XYZ" is not lowercase hex`,
				`pair (do it ` + h(6) + `): method "do it" contains white space`,
				`pair (do_populate_sysroot ` + h(3) + `): unihash "abc" is not 64 lowercase hex characters`,
				`pair (do_populate_sysroot ` + h(5) + `): not known to the server`,
			} {
				if !strings.Contains(strings.Join(res.Problems, "\n"), p) {
					t.Errorf("problems lack %q:\n%s", p, strings.Join(res.Problems, "\n"))
				}
			}
			// get for every valid pair, get-stream for the misses.
			// Valid pairs once each (3 invalid or repeated), then the 3 misses.
			if wantRequests := len(pairs) - 3 + 3; db.requests != wantRequests {
				t.Errorf("server saw %d lookups, want %d", db.requests, wantRequests)
			}
		})
	}
}

func TestFromServerErrors(t *testing.T) {
	pairs := []MethodTaskhash{{mSysroot, h(1)}}
	db := &fakeDB{rows: map[MethodTaskhash]map[string]any{{mSysroot, h(1)}: row(mSysroot, h(1), h(0xa1), h(0x101), "2026-11-25T21:46:31+00:00", nil)}}
	tests := []struct {
		name   string
		handle func(c *fakeConn) // nil: no server at the address
		addr   string            // when no server
		opt    ServerOptions
		fn     func(index.Equivalence) error
		is     error
		want   []string
	}{
		{name: "websocket", addr: "ws://127.0.0.1:8686", want: []string{"ws://127.0.0.1:8686", "websocket"}},
		{name: "auto", addr: "auto", want: []string{`"auto"`, "host:port"}},
		{name: "no port", addr: "localhost", want: []string{`"localhost"`, "host:port"}},
		{name: "empty unix", addr: "unix://", want: []string{"empty socket path"}},
		{name: "long unix", addr: "unix:///" + strings.Repeat("d", 120), want: []string{"longer than the 107"}},
		{name: "no socket", addr: "unix:///nonexistent/hashserv.sock", want: []string{"/nonexistent/hashserv.sock", "no such file"}},
		{
			name:   "rejects handshake",
			handle: func(c *fakeConn) { c.line() }, // as bitbake does for a wrong version: close
			is:     ErrServerClosed, want: []string{"handshake"},
		},
		{
			name:   "not the protocol",
			handle: func(c *fakeConn) { c.handshake(); c.message(); c.send("HTTP/1.1 400 Bad Request") },
			is:     ErrProtocol, want: []string{"not JSON", "HTTP/1.1"},
		},
		{
			name:   "timeout",
			handle: func(c *fakeConn) { c.handshake(); c.message(); c.line() }, // until the client gives up
			opt:    ServerOptions{Pairs: pairs, Timeout: 200 * time.Millisecond},
			want:   []string{"no answer within 200ms"},
		},
		{
			name: "refused",
			handle: func(c *fakeConn) {
				c.handshake()
				c.message()
				c.sendMessage(map[string]bool{"alive": true})
				c.message()
				c.sendMessage(map[string]any{"invoke-error": map[string]string{"message": "Anonymous user is not allowed to access permissions(s) @read"}})
			},
			want: []string{`refused "get": Anonymous user is not allowed`, h(1)},
		},
		{
			name: "closes",
			handle: func(c *fakeConn) {
				c.handshake()
				c.message()
				c.sendMessage(map[string]bool{"alive": true})
				c.message()
			},
			is: ErrServerClosed, want: []string{h(1)},
		},
		{
			name: "wrong record",
			handle: func(c *fakeConn) {
				c.handshake()
				c.message()
				c.sendMessage(map[string]bool{"alive": true})
				c.message()
				c.sendMessage(row(mSysroot, h(2), h(0xa2), h(0x102), "", nil))
			},
			is: ErrProtocol, want: []string{"answered the record of"},
		},
		{
			// bitbake's own client reads lines of 64 KiB at most; a server
			// sending a longer one is not bitbake's.
			name: "line over 64 KiB",
			handle: func(c *fakeConn) {
				c.handshake()
				c.message()
				c.sendMessage(map[string]bool{"alive": true})
				c.message()
				c.send(`{"x": "` + strings.Repeat("y", 70000) + `"}`)
			},
			is: ErrProtocol, want: []string{"longer than 64 KiB", h(1)},
		},
		{
			name: "cut in a chunked reply",
			handle: func(c *fakeConn) {
				c.handshake()
				c.message()
				c.sendMessage(map[string]bool{"alive": true})
				c.message()
				c.send(`{"chunk-stream": null}`)
				c.send(`{"taskhash":`)
			},
			is: ErrServerClosed, want: []string{h(1)},
		},
		{name: "no pairs", handle: db.serve, opt: ServerOptions{}, is: ErrNoEnumeration, want: []string{"holds 5 unihash and 4 outhash rows"}},
		{
			name: "no pairs, no usage",
			handle: func(c *fakeConn) {
				c.handshake()
				c.message()
				c.sendMessage(map[string]bool{"alive": true})
				c.message()
				c.sendMessage(map[string]any{"invoke-error": map[string]string{"message": "Anonymous user is not allowed to access permissions(s) @db-admin"}})
			},
			opt: ServerOptions{}, is: ErrNoEnumeration,
		},
		{
			name: "fn error", handle: db.serve,
			fn: func(index.Equivalence) error { return errIndexFull },
			is: errIndexFull, want: []string{h(1)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr
			if tt.handle != nil {
				addr = startFake(t, "unix", tt.handle)
			}
			opt := tt.opt
			if opt.Pairs == nil && tt.name != "no pairs" && tt.name != "no pairs, no usage" {
				opt.Pairs = pairs
			}
			if opt.Timeout == 0 {
				opt.Timeout = 5 * time.Second
			}
			fn := tt.fn
			if fn == nil {
				fn = func(index.Equivalence) error { return nil }
			}
			_, err := FromServer(context.Background(), addr, opt, fn)
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

var errIndexFull = errors.New("index full")

func TestFromServerInvokeErrorType(t *testing.T) {
	addr := startFake(t, "tcp", func(c *fakeConn) {
		c.handshake()
		c.message()
		c.sendMessage(map[string]bool{"alive": true})
		c.message()
		c.sendMessage(map[string]any{"invoke-error": map[string]string{"message": "Invalid unihash"}})
	})
	_, err := FromServer(context.Background(), addr, ServerOptions{Pairs: []MethodTaskhash{{mSysroot, h(1)}}}, func(index.Equivalence) error { return nil })
	var ie *InvokeError
	if !errors.As(err, &ie) || ie.Command != "get" || ie.Message != "Invalid unihash" {
		t.Errorf("error %v, want an *InvokeError of get: Invalid unihash", err)
	}
}

func TestFromServerCancel(t *testing.T) {
	db := &fakeDB{rows: map[MethodTaskhash]map[string]any{}}
	var pairs []MethodTaskhash
	for i := range 3 * batchSize {
		db.rows[MethodTaskhash{mSysroot, h(i)}] = row(mSysroot, h(i), h(i), h(i), "", nil)
		pairs = append(pairs, MethodTaskhash{mSysroot, h(i)})
	}
	addr := startFake(t, "unix", db.serve)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := FromServer(ctx, addr, ServerOptions{Pairs: pairs}, func(index.Equivalence) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if res.Read > batchSize {
		t.Errorf("read %d records after the cancel", res.Read)
	}
}
