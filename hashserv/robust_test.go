package hashserv

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
)

// Bad input gets a closed connection; the server goes on serving others
// and never records anything for it.
func TestBadInput(t *testing.T) {
	b := newMemBackend()
	s, addr := startServer(t, b, Options{IdleTimeout: 300 * time.Millisecond, MaxMessage: 1 << 20}, "unix")
	valid := `{"report": {"taskhash": "` + h64(1) + `", "method": "m", "outhash": "` + h64(2) + `", "unihash": "` + h64(3) + `"}}`
	for _, tc := range []struct {
		name string
		data string
	}{
		{"malformed JSON", `{"report": {"taskhash": ` + "\n"},
		{"JSON with trailing garbage", valid + "}\n"},
		{"invalid UTF-8", "{\"ping\": \"\xff\xfe\"}\n"},
		{"oversized line", strings.Repeat("x", MaxLine+10)},
		{"oversized JSON line", `{"ping": "` + strings.Repeat("x", MaxLine) + `"}` + "\n"},
		{"unterminated line then EOF", valid},
		{"chunk stream of garbage", "{\"chunk-stream\": null}\n" + strings.Repeat("garbage\n", 10) + "\n"},
		{"endless chunk stream", "{\"chunk-stream\": null}\n" + strings.Repeat(strings.Repeat("a", 30000)+"\n", 40)},
		{"chunk stream that is not an object", "{\"chunk-stream\": null}\n[1, 2]\n\n"},
		{"chunk stream of null", "{\"chunk-stream\": null}\nnull\n\n"},
		{"empty chunk stream", "{\"chunk-stream\": null}\n\n"},
		{"deeply nested", strings.Repeat("[", 20000) + "\n"},
		{"stream line oversized", "{\"get-stream\": null}\n" + strings.Repeat("y", MaxLine+1) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := connect(t, addr)
			cl.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(cl.c, tc.data) // the server may close early
			if strings.HasPrefix(tc.data, "{\"get-stream\"") {
				if l := cl.line(); l != "\"ok\"\n" {
					t.Fatalf("get-stream answered %q", l)
				}
			}
			if tc.name == "unterminated line then EOF" {
				cl.c.(interface{ CloseWrite() error }).CloseWrite()
			}
			cl.closed()
		})
	}
	// The server still works.
	cl := connect(t, addr)
	cl.ping()
	if r := b.records(); len(r) != 0 {
		t.Errorf("recorded %v", r)
	}
	if st := s.Stats(); st.Active != 1 {
		t.Errorf("%d connections still open", st.Active)
	}
}

// A client that never finishes its handshake, or stops in the middle of
// a message, or dribbles bytes, is disconnected after IdleTimeout; one
// that stops reading its answers too.
func TestStuckClients(t *testing.T) {
	const idle = 200 * time.Millisecond
	b := newMemBackend()
	// Known, so that each query has a 65-byte answer that fills the
	// socket buffers quickly.
	b.seed(index.Equivalence{Method: method, Taskhash: h64(1), Outhash: h64(2), Unihash: h64(3)})
	_, addr := startServer(t, b, Options{IdleTimeout: idle}, "tcp")
	for _, tc := range []struct {
		name string
		send string
	}{
		{"connects and says nothing", ""},
		{"protocol line only", "OEHASHEQUIV 1.1\n"},
		{"headers without the end", "OEHASHEQUIV 1.1\nneeds-headers: false\n"},
		{"half a message", "OEHASHEQUIV 1.1\n\n{\"ping\": "},
		{"half a chunk stream", "OEHASHEQUIV 1.1\n\n{\"chunk-stream\": null}\n{\"ping\": {}}\n"},
		{"silent in stream mode", "OEHASHEQUIV 1.1\n\n{\"get-stream\": null}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newClient(t, addr)
			cl.send(tc.send)
			start := time.Now()
			cl.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.ReadAll(cl.br) // whatever it answered, until the server closes
			if d := time.Since(start); d > 10*idle {
				t.Fatalf("disconnected after %v, IdleTimeout is %v", d, idle)
			}
		})
	}
	t.Run("dribbling handshake", func(t *testing.T) {
		// One byte at a time, each well within IdleTimeout: the whole
		// handshake must still arrive within it.
		cl := newClient(t, addr)
		hello := "OEHASHEQUIV 1.1\nx-padding: " + strings.Repeat("p", 100) + "\n\n"
		start := time.Now()
		for i := 0; i < len(hello); i++ {
			if _, err := io.WriteString(cl.c, hello[i:i+1]); err != nil {
				break
			}
			time.Sleep(idle / 10)
		}
		cl.closed()
		if d := time.Since(start); d > 3*idle+time.Second {
			t.Fatalf("disconnected after %v", d)
		}
	})
	t.Run("never reads", func(t *testing.T) {
		// Queries pile up answers the client never reads: the server's
		// writes time out and it disconnects.
		cl := connect(t, addr)
		cl.send(`{"get-stream": null}` + "\n")
		line := []byte(method + " " + h64(1) + "\n")
		var batch []byte
		for range 10000 {
			batch = append(batch, line...)
		}
		cl.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := cl.c.Write(batch); err != nil {
				return // the server closed the connection
			}
		}
		t.Fatal("server kept accepting queries from a client that reads nothing")
	})
}

// 100 clients at once, each reporting, looking up and checking objects.
func TestConcurrentClients(t *testing.T) {
	b := newMemBackend()
	s, addr := startServer(t, b, Options{}, "unix")
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				cl := connect(t, addr)
				// Pairs of clients report equivalent outputs.
				th, oh, uh := h64(0x10000+i), h64(0x20000+i/2), h64(0x30000+i)
				got := cl.report(th, oh, uh)
				if got != uh && got != h64(0x30000+(i^1)) {
					return fmt.Errorf("client %d: report answered %s", i, got)
				}
				b.addObject(got)
				if g := cl.getStream(th, h64(0x90000+i)); !reflect.DeepEqual(g, []string{got, ""}) {
					return fmt.Errorf("client %d: get-stream answered %q", i, g)
				}
				if l := cl.call(`{"exists-stream": null}`); l != "\"ok\"\n" {
					return fmt.Errorf("client %d: exists-stream answered %q", i, l)
				}
				cl.send(got + "\n" + h64(0x90000+i) + "\nEND\n")
				for _, want := range []string{"true\n", "false\n", "ok\n"} {
					if l := cl.line(); l != want {
						return fmt.Errorf("client %d: exists answered %q, want %q", i, l, want)
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// Every pair agrees on one unihash.
	for i := 0; i < n; i += 2 {
		a, _ := b.Get(method, h64(0x10000+i))
		c, _ := b.Get(method, h64(0x10000+i+1))
		if a.Unihash != c.Unihash {
			t.Errorf("equivalent tasks %d and %d got %s and %s", i, i+1, a.Unihash, c.Unihash)
		}
	}
	if st := s.Stats(); st.Records != n || st.Connections != n {
		t.Errorf("stats %+v", st)
	}
}

// A client sending garbage as fast as it can does not hold up another.
func TestGarbageDoesNotBlockOthers(t *testing.T) {
	b := newMemBackend()
	_, addr := startServer(t, b, Options{IdleTimeout: 5 * time.Second, MaxMessage: 1 << 20}, "tcp")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			junk := make([]byte, 64<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.Dial("tcp", addr)
				if err != nil {
					continue // the backlog may overflow under this load
				}
				if g%2 == 0 {
					// Inside a chunk stream: random lines, never empty.
					io.WriteString(c, "OEHASHEQUIV 1.1\n\n{\"chunk-stream\": null}\n")
				}
				for {
					rand.Read(junk)
					if g%2 == 0 {
						for i := range junk {
							if junk[i] == '\n' || junk[i] == ' ' {
								junk[i] = 'x'
							}
						}
						junk[30000] = '\n'
					}
					c.SetWriteDeadline(time.Now().Add(time.Second))
					if _, err := c.Write(junk); err != nil {
						break
					}
					time.Sleep(time.Millisecond)
					select {
					case <-stop:
						c.Close()
						return
					default:
					}
				}
				c.Close()
			}
		}()
	}
	cl := connect(t, addr)
	start := time.Now()
	for i := range 200 {
		if u := cl.report(h64(i), h64(0x1000+i), h64(0x2000+i)); u != h64(0x2000+i) {
			t.Fatalf("report %d answered %s", i, u)
		}
		if g := cl.getStream(h64(i)); g[0] != h64(0x2000+i) {
			t.Fatalf("get-stream %d answered %q", i, g)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("400 requests beside the garbage in %v", time.Since(start))
	if n := len(b.records()); n != 200 {
		t.Errorf("%d records, want 200", n)
	}
}

// Serve returns once its context is done, closing open connections.
func TestServeShutdown(t *testing.T) {
	b := newMemBackend()
	s := New(b, Options{})
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	addr := ln.Addr().String()
	cl := connect(t, addr)
	cl.ping()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	cl.closed()
	if st := s.Stats(); st.Active != 0 {
		t.Errorf("%d connections open after Serve returned", st.Active)
	}
}
