package testutil

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 that delays and throttles what passes
// through it: each chunk is delivered Delay after it was read (one way, so
// a round trip costs 2×Delay, and data in flight does not wait behind
// itself), and each direction is limited to Rate bytes per second (0: no
// limit). The kernel's netem is not available everywhere; this is.
type Proxy struct {
	Addr   string // host:port to connect to instead of the target
	ln     net.Listener
	target string
	delay  time.Duration
	rate   int64

	mu    sync.Mutex // protects conns
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// StartProxy proxies to target ("127.0.0.1:port") until the test ends.
func StartProxy(t testing.TB, target string, delay time.Duration, rate int64) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, target: target, delay: delay, rate: rate, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Close stops the proxy and cuts every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(c, true)
		p.track(up, true)
		p.wg.Add(2)
		var once sync.Once
		closeBoth := func() {
			once.Do(func() {
				c.Close()
				up.Close()
				p.track(c, false)
				p.track(up, false)
			})
		}
		go func() { defer p.wg.Done(); p.pipe(up, c); closeBoth() }()
		go func() { defer p.wg.Done(); p.pipe(c, up); closeBoth() }()
	}
}

type chunk struct {
	data []byte
	at   time.Time // when it may be written
	err  error
}

// pipe copies src to dst, delaying each chunk and limiting the rate.
func (p *Proxy) pipe(dst, src net.Conn) {
	ch := make(chan chunk, 256)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{data: buf[:n], at: time.Now().Add(p.delay)}
			}
			if err != nil {
				ch <- chunk{err: err, at: time.Now().Add(p.delay)}
				return
			}
		}
	}()
	// on an early return, drain ch so the reader is not left blocked
	defer func() {
		go func() {
			for range ch {
			}
		}()
	}()
	var sent time.Time // when the rate limit lets the next byte go
	for c := range ch {
		if d := time.Until(c.at); d > 0 {
			time.Sleep(d)
		}
		if c.err != nil {
			if c.err == io.EOF {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
					continue
				}
			}
			return
		}
		if p.rate > 0 {
			now := time.Now()
			if sent.Before(now) {
				sent = now
			}
			sent = sent.Add(time.Duration(int64(len(c.data)) * int64(time.Second) / p.rate))
			if d := time.Until(sent); d > 0 {
				time.Sleep(d)
			}
		}
		if _, err := dst.Write(c.data); err != nil {
			return
		}
	}
}
