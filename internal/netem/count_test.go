package netem

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestCounts sends requests of every kind, with bodies framed by length
// and by chunks (whose bytes look like requests), through the proxy to a
// real HTTP server, and checks the proxy counted each once by its kind.
func TestCounts(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("GET /not-a-request HTTP/1.1\r\n\r\n"))
	}))
	defer srv.Close()
	p, err := Start(strings.TrimPrefix(srv.URL, "http://"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	base := "http://" + p.Addr
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	// A body that looks like requests must not be counted as any.
	fake := bytes.Repeat([]byte("PUT /b/k HTTP/1.1\r\nHost: x\r\n\r\n"), 3000)
	do := func(method, path string, body io.Reader, chunked bool) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if chunked {
			req.ContentLength = -1 // Transfer-Encoding: chunked
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	do("GET", "/bucket/ab/cd/obj.tar.zst", nil, false)
	do("GET", "/bucket/ab/cd/obj.tar.zst", nil, false)
	do("HEAD", "/bucket/ab/cd/obj.tar.zst.siginfo", nil, false)
	do("PUT", "/bucket/ab/cd/x", bytes.NewReader(fake), false)
	do("PUT", "/bucket/ab/cd/y", io.MultiReader(bytes.NewReader(fake), strings.NewReader("tail")), true)
	do("GET", "/bucket?list-type=2&prefix=.sstatefs%2F", nil, false)
	do("GET", "/bucket?location", nil, false)
	do("DELETE", "/bucket/ab/cd/x", nil, false)
	do("POST", "/bucket/ab/cd/z?uploads", strings.NewReader("x"), false)
	do("GET", "/bucket/ab/cd/obj.tar.zst", nil, false)

	c := p.Counts()
	want := map[string]int64{KindGET: 3, KindHEAD: 1, KindPUT: 2, KindLIST: 2, KindDELETE: 1, KindPOST: 1}
	for k, v := range want {
		if c.Requests[k] != v {
			t.Errorf("%s: counted %d, want %d (all: %v)", k, c.Requests[k], v, c.Requests)
		}
	}
	if c.Total() != 10 {
		t.Errorf("counted %d requests, want 10: %v", c.Total(), c.Requests)
	}
	if c.Up < int64(2*len(fake)) || c.Down == 0 {
		t.Errorf("bytes up %d, down %d: want at least the two bodies up and the answers down", c.Up, c.Down)
	}
	d := p.Counts().Sub(c)
	if d.Total() != 0 || d.Up != 0 {
		t.Errorf("difference of two readings with nothing between: %+v", d)
	}
}

func TestKind(t *testing.T) {
	for _, c := range []struct{ method, target, want string }{
		{"GET", "/b/ab/cd/sstate:x.tar.zst", KindGET},
		{"GET", "/b/ab/cd/sstate:x.tar.zst?partNumber=1", KindGET},
		{"GET", "/b?list-type=2", KindLIST},
		{"GET", "/b/?prefix=ab%2F", KindLIST},
		{"GET", "/sstate-cache/ab/cd/x.siginfo", KindGET},
		{"PATCH", "/b/k", KindOther},
	} {
		if got := kind(c.method, c.target); got != c.want {
			t.Errorf("kind(%s %s) = %s, want %s", c.method, c.target, got, c.want)
		}
	}
}

// TestCountsNotHTTP: a stream that is not HTTP counts once as other and
// still passes through.
func TestCountsNotHTTP(t *testing.T) {
	rp := &requestParser{c: &counter{reqs: map[string]int64{}}}
	rp.write([]byte("\x16\x03\x01 binary hello\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
	if rp.c.reqs[KindOther] != 1 || len(rp.c.reqs) != 1 {
		t.Errorf("counts %v, want one other", rp.c.reqs)
	}
}

// TestCountsSplit feeds requests a byte at a time.
func TestCountsSplit(t *testing.T) {
	rp := &requestParser{c: &counter{reqs: map[string]int64{}}}
	s := "PUT /b/k HTTP/1.1\r\nContent-Length: 5\r\n\r\nHEAD HEAD / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nGET\r\n0\r\n\r\nGET /b?list-type=2 HTTP/1.1\r\n\r\n"
	for i := range len(s) {
		rp.write([]byte{s[i]})
	}
	want := map[string]int64{KindPUT: 1, KindHEAD: 1, KindLIST: 1}
	if len(rp.c.reqs) != len(want) {
		t.Fatalf("counts %v, want %v", rp.c.reqs, want)
	}
	for k, v := range want {
		if rp.c.reqs[k] != v {
			t.Errorf("counts %v, want %v", rp.c.reqs, want)
		}
	}
}
