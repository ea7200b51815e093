package hashserv

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
)

// memBackend is an in-memory Backend for protocol tests: the first record
// of a taskhash and of an outhash win, exact duplicates are ignored.
type memBackend struct {
	mu        sync.Mutex
	byTask    map[[2]string]index.Equivalence
	byOut     map[[2]string]index.Equivalence
	triples   map[[3]string]bool
	objects   map[string]bool
	recorded  []index.Equivalence
	recordErr error                   // returned by Record when set
	block     chan struct{}           // Record waits on it when set
	hook      func(index.Equivalence) // called first by Record when set
}

func newMemBackend() *memBackend {
	return &memBackend{
		byTask:  map[[2]string]index.Equivalence{},
		byOut:   map[[2]string]index.Equivalence{},
		triples: map[[3]string]bool{},
		objects: map[string]bool{},
	}
}

func (b *memBackend) Get(method, taskhash string) (index.Equivalence, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.byTask[[2]string{method, taskhash}]
	return e, ok
}

func (b *memBackend) GetByOuthash(method, outhash string) (index.Equivalence, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.byOut[[2]string{method, outhash}]
	return e, ok
}

func (b *memBackend) ObjectExists(unihash string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.objects[unihash]
}

func (b *memBackend) Record(ctx context.Context, e index.Equivalence) error {
	if b.hook != nil {
		b.hook(e)
	}
	if b.block != nil {
		select {
		case <-b.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.recordErr != nil {
		return b.recordErr
	}
	b.recorded = append(b.recorded, e)
	b.store(e)
	return nil
}

// store adds a record (also used to seed a backend).
func (b *memBackend) store(e index.Equivalence) {
	t := [3]string{e.Method, e.Taskhash, e.Outhash}
	if b.triples[t] {
		return
	}
	b.triples[t] = true
	if _, ok := b.byTask[[2]string{e.Method, e.Taskhash}]; !ok {
		b.byTask[[2]string{e.Method, e.Taskhash}] = e
	}
	if _, ok := b.byOut[[2]string{e.Method, e.Outhash}]; !ok && e.Outhash != "" {
		b.byOut[[2]string{e.Method, e.Outhash}] = e
	}
}

func (b *memBackend) seed(e index.Equivalence) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.store(e)
}

func (b *memBackend) addObject(unihash string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.objects[unihash] = true
}

func (b *memBackend) records() []index.Equivalence {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]index.Equivalence(nil), b.recorded...)
}

// h64 is a 64-hex-digit hash of n, as the transcript's "%064x".
func h64(n int) string { return fmt.Sprintf("%064x", n) }

const method = "do_populate_sysroot"

// testLogger logs to the test with -v only.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startServer serves b on a unix socket in a temp dir (network "unix") or
// on 127.0.0.1 (network "tcp") until the test ends; it returns the
// server and the address in BB_HASHSERVE form.
func startServer(t testing.TB, b Backend, opt Options, network string) (*Server, string) {
	t.Helper()
	if opt.Logger == nil {
		opt.Logger = testLogger(t)
	}
	s := New(b, opt)
	var addr string
	switch network {
	case "unix":
		dir, err := os.MkdirTemp("", "hs")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		addr = "unix://" + filepath.Join(dir, "hashserv.sock")
	case "tcp":
		addr = "127.0.0.1:0"
	default:
		t.Fatalf("network %q", network)
	}
	ln, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	if network == "tcp" {
		addr = ln.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return s, addr
}

// serveAndConnect serves b with opt on a unix socket until the test ends
// and returns the server and a client connected to it (see connect).
func serveAndConnect(t testing.TB, b Backend, opt Options) (*Server, *client) {
	t.Helper()
	s, addr := startServer(t, b, opt, "unix")
	return s, connect(t, addr)
}

// dial connects to an address in BB_HASHSERVE form.
func dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		c, err = net.Dial("unix", p)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// client is a raw protocol client for tests.
type client struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func newClient(t testing.TB, addr string) *client {
	t.Helper()
	c := dial(t, addr)
	return &client{t: t, c: c, br: bufio.NewReaderSize(c, 1<<20)}
}

// connect opens a connection and sends bitbake's client handshake.
func connect(t testing.TB, addr string) *client {
	t.Helper()
	cl := newClient(t, addr)
	cl.send("OEHASHEQUIV 1.1\nneeds-headers: false\n\n")
	return cl
}

func (cl *client) send(s string) {
	cl.t.Helper()
	cl.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(cl.c, s); err != nil {
		cl.t.Fatalf("send: %v", err)
	}
}

// line reads one line (with its newline).
func (cl *client) line() string {
	cl.t.Helper()
	cl.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := cl.br.ReadString('\n')
	if err != nil {
		cl.t.Fatalf("reading a line: %v (got %q)", err, l)
	}
	return l
}

// call sends a JSON message and returns the raw reply line.
func (cl *client) call(msg string) string {
	cl.t.Helper()
	cl.send(msg + "\n")
	return cl.line()
}

// callJSON sends v as one JSON line and decodes the reply.
func (cl *client) callJSON(v any) any {
	cl.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		cl.t.Fatal(err)
	}
	var r any
	l := cl.call(string(b))
	if err := json.Unmarshal([]byte(l), &r); err != nil {
		cl.t.Fatalf("reply %q: %v", l, err)
	}
	return r
}

// ping asserts that the server answers a ping.
func (cl *client) ping() {
	cl.t.Helper()
	if got := cl.call(`{"ping": {}}`); got != "{\"alive\": true}\n" {
		cl.t.Fatalf("ping answered %q", got)
	}
}

// closed asserts that the server closes the connection without sending
// anything more.
func (cl *client) closed() {
	cl.t.Helper()
	cl.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(cl.br)
	if len(b) > 0 {
		cl.t.Fatalf("server sent %q, want the connection closed", b)
	}
	if err != nil && !errors.Is(err, io.EOF) && !isReset(err) {
		cl.t.Fatalf("want the connection closed, got %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// report sends a report and returns the unihash answered.
func (cl *client) report(taskhash, outhash, unihash string) string {
	cl.t.Helper()
	r := cl.callJSON(map[string]any{"report": map[string]any{"taskhash": taskhash, "method": method, "outhash": outhash, "unihash": unihash}})
	m, ok := r.(map[string]any)
	if !ok {
		cl.t.Fatalf("report answered %v", r)
	}
	return m["unihash"].(string)
}

// getStream looks taskhashes up in get-stream mode.
func (cl *client) getStream(taskhashes ...string) []string {
	cl.t.Helper()
	if l := cl.call(`{"get-stream": null}`); l != "\"ok\"\n" {
		cl.t.Fatalf("get-stream answered %q", l)
	}
	var out []string
	for _, th := range taskhashes {
		cl.send(method + " " + th + "\n")
		out = append(out, strings.TrimSuffix(cl.line(), "\n"))
	}
	if l := cl.call("END"); l != "ok\n" {
		cl.t.Fatalf("END answered %q", l)
	}
	return out
}
