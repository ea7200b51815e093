package netem

import (
	"bytes"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// Request kinds the proxy counts. S3 lists are GETs of the bucket (a
// list-type or prefix query, or no key), told apart because they are
// priced like PUTs.
const (
	KindGET    = "GET"
	KindHEAD   = "HEAD"
	KindPUT    = "PUT"
	KindLIST   = "LIST"
	KindPOST   = "POST"
	KindDELETE = "DELETE"
	KindOther  = "other" // another method, or a stream that is not HTTP/1.x
)

// Counts is what passed through a proxy: HTTP requests by kind and bytes
// in each direction.
type Counts struct {
	Requests map[string]int64
	Up, Down int64 // bytes client → server, server → client
}

// Total is the number of requests of every kind.
func (c Counts) Total() int64 {
	var n int64
	for _, v := range c.Requests {
		n += v
	}
	return n
}

// Sub is c minus an earlier reading.
func (c Counts) Sub(earlier Counts) Counts {
	d := Counts{Requests: map[string]int64{}, Up: c.Up - earlier.Up, Down: c.Down - earlier.Down}
	for k, v := range c.Requests {
		if v -= earlier.Requests[k]; v != 0 {
			d.Requests[k] = v
		}
	}
	return d
}

type counter struct {
	mu   sync.Mutex
	reqs map[string]int64
	up   int64
	down int64
}

func (c *counter) add(kind string) {
	c.mu.Lock()
	c.reqs[kind]++
	c.mu.Unlock()
}

func (c *counter) bytes(up bool, n int) {
	c.mu.Lock()
	if up {
		c.up += int64(n)
	} else {
		c.down += int64(n)
	}
	c.mu.Unlock()
}

// Counts returns what passed through the proxy so far.
func (p *Proxy) Counts() Counts {
	p.count.mu.Lock()
	defer p.count.mu.Unlock()
	c := Counts{Requests: make(map[string]int64, len(p.count.reqs)), Up: p.count.up, Down: p.count.down}
	for k, v := range p.count.reqs {
		c.Requests[k] = v
	}
	return c
}

// maxHeader bounds the request head the parser keeps; a longer one is not
// HTTP as the clients here speak it.
const maxHeader = 64 << 10

// requestParser follows the client side of one HTTP/1.x connection and
// counts each request by kind. It only observes: the bytes pass through the
// proxy unchanged whatever it makes of them. Bodies are skipped by their
// Content-Length or chunked framing. A stream it cannot follow counts one
// "other" and is ignored from then on.
//
// A client that sends "Expect: 100-continue" and then skips the body after
// a final answer (Go closes such a connection) is not followed further.
type requestParser struct {
	c       *counter
	head    []byte // the request head read so far
	body    int64  // body bytes still to skip
	chunked bool
	// chunk state: line holds a chunk-size line (or a trailer line) being
	// read; trailer is set after the last chunk.
	inChunk bool
	line    []byte
	trailer bool
	broken  bool
}

func (rp *requestParser) write(b []byte) {
	for len(b) > 0 && !rp.broken {
		switch {
		case rp.body > 0:
			n := min(int64(len(b)), rp.body)
			rp.body -= n
			b = b[n:]
		case rp.chunked:
			b = rp.chunk(b)
		default:
			b = rp.header(b)
		}
	}
}

// header accumulates a request head and starts its body.
func (rp *requestParser) header(b []byte) []byte {
	// A head ends at the first blank line; search from just before the
	// new bytes so that a CRLFCRLF split between writes is found.
	from := max(0, len(rp.head)-3)
	rp.head = append(rp.head, b...)
	i := bytes.Index(rp.head[from:], []byte("\r\n\r\n"))
	if i < 0 {
		if len(rp.head) > maxHeader {
			rp.fail()
		}
		return nil
	}
	end := from + i + 4
	rest := rp.head[end:]
	head := string(rp.head[:end])
	rp.head = rp.head[:0]
	if !rp.request(head) {
		rp.fail()
		return nil
	}
	return append([]byte(nil), rest...)
}

func (rp *requestParser) fail() {
	rp.broken = true
	rp.head = nil
	rp.c.add(KindOther)
}

// request counts one request head and sets up its body; false if it is
// not an HTTP/1.x request.
func (rp *requestParser) request(head string) bool {
	lines := strings.Split(head, "\r\n")
	f := strings.Fields(lines[0])
	if len(f) != 3 || !strings.HasPrefix(f[2], "HTTP/1.") {
		return false
	}
	rp.c.add(kind(f[0], f[1]))
	for _, l := range lines[1:] {
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(name) {
		case "content-length":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 {
				return false
			}
			rp.body = n
		case "transfer-encoding":
			if strings.Contains(strings.ToLower(value), "chunked") {
				rp.chunked, rp.inChunk, rp.trailer = true, false, false
			}
		}
	}
	if rp.chunked {
		rp.body = 0
	}
	return true
}

// chunk follows a chunked body: size lines, data (skipped through body),
// the CRLF after it, and the trailer after the last chunk.
func (rp *requestParser) chunk(b []byte) []byte {
	if rp.inChunk { // the CRLF after a chunk's data
		rp.inChunk = false
		rp.line = rp.line[:0]
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		rp.line = append(rp.line, b...)
		if len(rp.line) > maxHeader {
			rp.fail()
		}
		return nil
	}
	line := strings.TrimSpace(string(append(rp.line, b[:i]...)))
	rp.line = rp.line[:0]
	b = b[i+1:]
	if rp.trailer {
		if line == "" {
			rp.chunked, rp.trailer = false, false
		}
		return b
	}
	sizeText, _, _ := strings.Cut(line, ";")
	if sizeText == "" { // the CRLF that ends a chunk's data
		return b
	}
	n, err := strconv.ParseInt(sizeText, 16, 64)
	if err != nil || n < 0 {
		rp.fail()
		return nil
	}
	if n == 0 {
		rp.trailer = true
		return b
	}
	rp.body = n
	return b
}

// kind classifies a request by method and target.
func kind(method, target string) string {
	switch method {
	case "HEAD", "PUT", "POST", "DELETE":
		return method
	case "GET":
	default:
		return KindOther
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return KindGET
	}
	q := u.Query()
	if q.Has("list-type") || q.Has("prefix") || q.Has("delimiter") || q.Has("uploads") || q.Has("marker") {
		return KindLIST
	}
	// Path style: /bucket or /bucket/ with no key is a list.
	if p := strings.Trim(u.Path, "/"); p != "" && !strings.Contains(p, "/") && u.RawQuery != "" {
		return KindLIST
	}
	return KindGET
}
