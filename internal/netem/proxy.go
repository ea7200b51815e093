// Package netem is a network emulator for tests and the benchmark: a TCP
// proxy on 127.0.0.1 that adds latency (and optionally limits bandwidth)
// without serialising data in flight, since the kernel's netem is not
// available everywhere.
package netem

import (
	"io"
	"net"
	"sync"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 that makes a fast loopback look like a
// network with a round-trip time: every chunk read from one side is written
// to the other side Delay (= RTT/2) after it was read. Chunks are delayed,
// not serialised: while one waits, the next ones are already being read, so
// a stream keeps the throughput the machine allows and only its latency
// changes (a delay-per-request proxy would cap a stream at chunk/delay).
//
// Buffers are pooled so that gigabytes passing through make no garbage.
type Proxy struct {
	Addr   string // host:port to connect to instead of target
	ln     net.Listener
	target string
	delay  time.Duration // one way
	rate   int64         // bytes per second in each direction; 0: no limit

	mu    sync.Mutex // protects conns
	conns map[net.Conn]bool
	wg    sync.WaitGroup

	count counter // requests by kind and bytes (count.go)
}

const (
	// ChunkSize is the most one read moves through the proxy at once.
	ChunkSize = 64 << 10
	// proxyInFlight chunks may wait in one direction of one connection: the
	// bytes in flight that a stream needs are throughput × delay, and
	// 1024 × 64 KiB per 5 ms is far above what loopback moves.
	proxyInFlight = 1024
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}

// Start listens on a free port of 127.0.0.1 and forwards every connection
// to target with a round-trip time of rtt (each direction rtt/2) and, when
// rate > 0, at most rate bytes per second in each direction.
func Start(target string, rtt time.Duration, rate int64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, target: target, delay: rtt / 2, rate: rate, conns: map[net.Conn]bool{},
		count: counter{reqs: map[string]int64{}}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Close stops listening, cuts every connection and waits for the copiers.
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
		var once sync.Once
		closeBoth := func() {
			once.Do(func() {
				c.Close()
				up.Close()
				p.track(c, false)
				p.track(up, false)
			})
		}
		// A connection ends when both directions have: a half-close is
		// passed on (CloseWrite), so a client that shuts its side down
		// still gets the answer.
		var both sync.WaitGroup
		both.Add(2)
		p.wg.Add(3)
		rp := &requestParser{c: &p.count}
		go func() { defer p.wg.Done(); defer both.Done(); p.pipe(up, c, true, rp.write) }()
		go func() { defer p.wg.Done(); defer both.Done(); p.pipe(c, up, false, nil) }()
		go func() { defer p.wg.Done(); both.Wait(); closeBoth() }()
	}
}

type chunk struct {
	buf *[]byte
	n   int
	at  time.Time // when it may be written
	err error     // the read error that ends the stream (with n == 0)
}

// pipe copies src to dst, delivering each chunk delay after it was read.
// up says which direction it is (for the byte counts); observe, if set,
// sees every chunk as it is read (the client's requests, to count them).
func (p *Proxy) pipe(dst, src net.Conn, up bool, observe func([]byte)) {
	ch := make(chan chunk, proxyInFlight)
	go func() {
		defer close(ch)
		for {
			b := chunkPool.Get().(*[]byte)
			n, err := src.Read(*b)
			if n > 0 {
				p.count.bytes(up, n)
				if observe != nil {
					observe((*b)[:n])
				}
				ch <- chunk{buf: b, n: n, at: time.Now().Add(p.delay)}
			} else {
				chunkPool.Put(b)
			}
			if err != nil {
				ch <- chunk{err: err, at: time.Now().Add(p.delay)}
				return
			}
		}
	}()
	failed := false
	var sent time.Time // when the rate limit lets the next byte go
	for c := range ch {
		if failed { // drain, so the reader is not left blocked
			if c.buf != nil {
				chunkPool.Put(c.buf)
			}
			continue
		}
		if d := time.Until(c.at); d > 0 {
			time.Sleep(d)
		}
		if c.err != nil {
			if c.err == io.EOF {
				if tc, ok := dst.(*net.TCPConn); ok && tc.CloseWrite() == nil {
					continue
				}
			}
			// A reset or a closed socket: cut both ways.
			dst.Close()
			src.Close()
			failed = true
			continue
		}
		if p.rate > 0 {
			if now := time.Now(); sent.Before(now) {
				sent = now
			}
			sent = sent.Add(time.Duration(int64(c.n) * int64(time.Second) / p.rate))
			if d := time.Until(sent); d > 0 {
				time.Sleep(d)
			}
		}
		_, err := dst.Write((*c.buf)[:c.n])
		chunkPool.Put(c.buf)
		if err != nil {
			dst.Close()
			src.Close()
			failed = true
		}
	}
}
