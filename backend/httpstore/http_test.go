package httpstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/storetest"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// newStore builds a store; unless the test chose credentials, it reads an
// empty netrc so the developer's ~/.netrc stays out of the tests.
func newStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	if cfg.Netrc == "" && cfg.BearerTokenFile == "" {
		cfg.Netrc = writeFile(t, "netrc", "")
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// serveTLS starts an HTTPS server that does not log the handshakes the
// tests make fail.
func serveTLS(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// seed writes key under dir, as a mirror's operator would.
func seed(t *testing.T, dir, key string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestConformance(t *testing.T) {
	var mu sync.Mutex
	dirs := map[*testing.T]string{} // the served directory of each subtest
	storetest.Run(t, func(t *testing.T) backend.Store {
		dir := t.TempDir()
		srv := serve(t, http.StripPrefix("/all", http.FileServer(http.Dir(dir))))
		mu.Lock()
		dirs[t] = dir
		mu.Unlock()
		return newStore(t, Config{URL: srv.URL + "/all"})
	}, storetest.Options{
		ReadOnly: true,
		NoList:   true,
		Seed: func(t *testing.T, key string, data []byte) {
			mu.Lock()
			dir := dirs[t]
			mu.Unlock()
			seed(t, dir, key, data)
		},
	})
}

func TestParseNetrc(t *testing.T) {
	for _, tc := range []struct {
		name, data, host string
		login, password  string
		found            bool
		err              string // substring of the error; "" means success
	}{
		{name: "one line", data: "machine a.example login u password p", host: "a.example", login: "u", password: "p", found: true},
		{name: "host case", data: "machine A.Example login u password p", host: "a.example", login: "u", password: "p", found: true},
		{name: "multi line", data: "machine h\n  login u\n  password p\n", host: "h", login: "u", password: "p", found: true},
		{name: "pick machine", data: "machine a login ua password pa\nmachine b login ub password pb\n", host: "b", login: "ub", password: "pb", found: true},
		{name: "first match wins", data: "machine b login one password 1\nmachine b login two password 2\n", host: "b", login: "one", password: "1", found: true},
		{name: "no match", data: "machine a login u password p", host: "b"},
		{name: "empty", data: "", host: "b"},
		{name: "default", data: "machine a login u password p\ndefault login anon password guest\n", host: "b", login: "anon", password: "guest", found: true},
		{name: "machine before default", data: "machine a login u password p\ndefault login anon password guest\n", host: "a", login: "u", password: "p", found: true},
		{name: "login only", data: "machine h login u", host: "h", login: "u", found: true},
		{name: "account ignored", data: "machine h login u account acct password p", host: "h", login: "u", password: "p", found: true},
		{name: "macdef skipped", data: "macdef init\ncd /pub\nmachine h login evil password evil\n\nmachine h login u password p\n", host: "h", login: "u", password: "p", found: true},
		{name: "macdef inside machine", data: "machine h login u password p macdef x\nbody line\n\nmachine i login v password q\n", host: "i", login: "v", password: "q", found: true},
		{name: "comment", data: "# machine h login evil password evil\nmachine h login u password p\n", host: "h", login: "u", password: "p", found: true},
		{name: "quoted", data: `machine h login "a user" password "p \"w\" \\x"`, host: "h", login: "a user", password: `p "w" \x`, found: true},
		{name: "hash inside password", data: "machine h login u password #p", host: "h", login: "u", password: "#p", found: true},
		{name: "crlf and tabs", data: "machine h\r\n\tlogin u\r\n\tpassword p\r\n", host: "h", login: "u", password: "p", found: true},
		{name: "missing value", data: "machine h login u password", err: `line 1: "password" without a value`},
		{name: "missing machine name", data: "login u\n", err: `line 1: "login" before any machine`},
		{name: "unknown token", data: "machine h login u password p\nport 21 secretish\n", err: "line 2: unexpected token"},
		{name: "unterminated quote", data: "machine h\nlogin u password \"p", err: "line 2: unterminated quoted string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entries, err := parseNetrc(tc.data)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseNetrc: error %v, want one containing %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "secretish") || strings.Contains(err.Error(), "21") {
					t.Errorf("error %q quotes a token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseNetrc: %v", err)
			}
			e, found := lookupNetrc(entries, tc.host)
			if found != tc.found || e.login != tc.login || e.password != tc.password {
				t.Errorf("lookup(%q) = %q/%q found=%v, want %q/%q found=%v", tc.host, e.login, e.password, found, tc.login, tc.password, tc.found)
			}
		})
	}
}

// authServer answers HEAD with 200 and 3 bytes, and records the
// Authorization header of each request.
type authServer struct {
	mu   sync.Mutex
	seen []string
}

func (a *authServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.seen = append(a.seen, r.Header.Get("Authorization"))
	a.mu.Unlock()
	w.Header().Set("Content-Length", "3")
	w.WriteHeader(http.StatusOK)
}

func (a *authServer) last() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) == 0 {
		return "<no request>"
	}
	return a.seen[len(a.seen)-1]
}

func TestBearerToken(t *testing.T) {
	ctx := context.Background()
	a := &authServer{}
	srv := serve(t, a)
	tokPath := writeFile(t, "token", "tok-one")
	// A netrc entry for the host must lose to the token.
	netrc := writeFile(t, "netrc", "machine 127.0.0.1 login u password p\n")
	s := newStore(t, Config{URL: srv.URL, BearerTokenFile: tokPath, Netrc: netrc})

	stat := func(want string) {
		t.Helper()
		if _, err := s.Stat(ctx, "ab/cd/x"); err != nil {
			t.Fatal(err)
		}
		if got := a.last(); got != want {
			t.Fatalf("Authorization = %q, want %q", got, want)
		}
	}
	stat("Bearer tok-one")
	stat("Bearer tok-one")

	// Rotated in place: same size, so only the mtime tells.
	if err := os.WriteFile(tokPath, []byte("tok-two"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(tokPath, later, later); err != nil {
		t.Fatal(err)
	}
	stat("Bearer tok-two")

	// Rotated by rename, as Kubernetes and most sidecars do.
	tmp := tokPath + ".new"
	if err := os.WriteFile(tmp, []byte("  token-three \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, tokPath); err != nil {
		t.Fatal(err)
	}
	stat("Bearer token-three")

	// Mid-rotation (gone, or empty), the last token stays in use.
	if err := os.Remove(tokPath); err != nil {
		t.Fatal(err)
	}
	stat("Bearer token-three")
	if err := os.WriteFile(tokPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stat("Bearer token-three")
	if err := os.WriteFile(tokPath, []byte("tok-four"), 0o600); err != nil {
		t.Fatal(err)
	}
	stat("Bearer tok-four")
}

func TestBasicAuth(t *testing.T) {
	ctx := context.Background()
	a := &authServer{}
	srv := serve(t, a)
	hostPort := strings.TrimPrefix(srv.URL, "http://")
	basic := func(u, p string) string {
		r, _ := http.NewRequest("GET", "http://x/", nil)
		r.SetBasicAuth(u, p)
		return r.Header.Get("Authorization")
	}
	for _, tc := range []struct {
		name   string
		url    string
		netrc  string // contents; "-" means Config.Netrc stays "" and $NETRC names the file
		envRC  string
		want   string
		expect string
	}{
		{name: "machine", url: srv.URL, netrc: "machine other login x password y\nmachine 127.0.0.1 login alice password s3cret\n", want: basic("alice", "s3cret")},
		{name: "default", url: srv.URL, netrc: "machine other login x password y\ndefault login anon password guest\n", want: basic("anon", "guest")},
		{name: "no match", url: srv.URL, netrc: "machine other login x password y\n", want: ""},
		{name: "NETRC env", url: srv.URL, envRC: "machine 127.0.0.1 login env password fromenv\n", want: basic("env", "fromenv")},
		{name: "URL userinfo wins", url: "http://bob:pw@" + hostPort + "/all", netrc: "machine 127.0.0.1 login alice password s3cret\n", want: basic("bob", "pw")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{URL: tc.url}
			if tc.envRC != "" {
				t.Setenv("NETRC", writeFile(t, "envnetrc", tc.envRC))
				s, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.Stat(ctx, "ab/cd/x"); err != nil {
					t.Fatal(err)
				}
			} else {
				cfg.Netrc = writeFile(t, "netrc", tc.netrc)
				s := newStore(t, cfg)
				if _, err := s.Stat(ctx, "ab/cd/x"); err != nil {
					t.Fatal(err)
				}
			}
			if got := a.last(); got != tc.want {
				t.Errorf("Authorization = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	seed(t, dir, "ab/cd/x", []byte("hello"))
	srv := serveTLS(t, http.FileServer(http.Dir(dir)))
	bundle := writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))

	s := newStore(t, Config{URL: srv.URL, CABundle: bundle})
	oi, err := s.Stat(ctx, "ab/cd/x")
	if err != nil || oi.Size != 5 {
		t.Fatalf("Stat with the CA bundle: %+v, %v", oi, err)
	}
	if got, err := testutil.ReadAll(t, s, "ab/cd/x", 1, 3); err != nil || string(got) != "ell" {
		t.Fatalf("read with the CA bundle: %q, %v", got, err)
	}

	s = newStore(t, Config{URL: srv.URL})
	_, err = s.Stat(ctx, "ab/cd/x")
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("Stat without the CA bundle: %v, want a certificate verification error", err)
	}
	t.Logf("without the bundle: %v", err)
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	notPEM := writeFile(t, "not.pem", "hello\n")
	badCert := writeFile(t, "bad.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})))
	emptyTok := writeFile(t, "empty-token", " \n")
	badNetrc := writeFile(t, "bad-netrc", "machine h login u\npassword\n")
	noNetrc := writeFile(t, "netrc", "")
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // substrings of the error
	}{
		{"ftp scheme", Config{URL: "ftp://mirror.example/all"}, []string{`"ftp://mirror.example/all"`, "scheme must be http or https"}},
		{"s3 scheme", Config{URL: "s3://bucket/prefix"}, []string{"s3://bucket/prefix", "scheme must be http or https"}},
		{"no scheme", Config{URL: "mirror.example/all"}, []string{"mirror.example/all", "no scheme"}},
		{"no host", Config{URL: "https:///all"}, []string{"no host"}},
		{"bad port", Config{URL: "http://mirror.example:x/"}, []string{"http store URL", "invalid port"}},
		{"missing token file", Config{URL: "http://127.0.0.1/", BearerTokenFile: missing}, []string{"bearer token file", missing}},
		{"empty token file", Config{URL: "http://127.0.0.1/", BearerTokenFile: emptyTok}, []string{emptyTok, "empty"}},
		{"missing CA bundle", Config{URL: "https://127.0.0.1/", CABundle: missing, Netrc: noNetrc}, []string{"CA bundle", missing}},
		{"missing netrc", Config{URL: "http://127.0.0.1/", Netrc: missing}, []string{"netrc", missing}},
		{"invalid netrc", Config{URL: "http://127.0.0.1/", Netrc: badNetrc}, []string{badNetrc, "line 2"}},
		{"negative MaxConns", Config{URL: "http://127.0.0.1/", Netrc: noNetrc, MaxConns: -1}, []string{"MaxConns"}},
		{"CA bundle without certificate", Config{URL: "https://127.0.0.1/", Netrc: noNetrc, CABundle: notPEM}, []string{notPEM, "no PEM certificate"}},
		{"CA bundle bad certificate", Config{URL: "https://127.0.0.1/", Netrc: noNetrc, CABundle: badCert}, []string{badCert, "certificate 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLocation(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"https://sstate.yoctoproject.org/all/", "https://sstate.yoctoproject.org/all"},
		{"https://sstate.yoctoproject.org/all", "https://sstate.yoctoproject.org/all"},
		{"http://user:SECRET@mirror.example:8080/a%20b/?sig=SECRET#frag", "http://mirror.example:8080/a%20b"},
		{"https://mirror.example", "https://mirror.example"},
	} {
		s := newStore(t, Config{URL: tc.url, Netrc: writeFile(t, "netrc", "")})
		if got := s.Location(); got != tc.want {
			t.Errorf("Location of %q = %q, want %q", tc.url, got, tc.want)
		}
	}
}

func TestKeyEscaping(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var uris []string
	fileServer := http.FileServer(http.Dir(dir))
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		uris = append(uris, r.RequestURI)
		mu.Unlock()
		if r.URL.Query().Get("sig") != "abc" {
			http.Error(w, "unsigned", http.StatusForbidden)
			return
		}
		http.StripPrefix("/base dir", fileServer).ServeHTTP(w, r)
	}))
	key := "ab/cd/sstate:gcc-cross:x86_64-linux:12.2+git:r0:x86_64:11:abcd_populate_sysroot.tar.zst?#%20 x"
	seed(t, dir, key, []byte("payload"))
	s := newStore(t, Config{URL: srv.URL + "/base%20dir/?sig=abc"})
	oi, err := s.Stat(context.Background(), key)
	if err != nil || oi.Size != 7 {
		t.Fatalf("Stat: %+v, %v", oi, err)
	}
	if got, err := testutil.ReadAll(t, s, key, 2, 3); err != nil || string(got) != "ylo" {
		t.Fatalf("read: %q, %v", got, err)
	}
	want := "/base%20dir/ab/cd/sstate:gcc-cross:x86_64-linux:12.2+git:r0:x86_64:11:abcd_populate_sysroot.tar.zst%3F%23%2520%20x?sig=abc"
	mu.Lock()
	defer mu.Unlock()
	for _, u := range uris {
		if u != want {
			t.Errorf("request URI %q, want %q", u, want)
		}
	}
}

// wholeServer serves data with 200 whatever the Range, as some mirrors do;
// without length it sends no Content-Length (a chunked body).
func wholeServer(data []byte, length bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if length {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		}
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			w.Write(data)
		}
	})
}

func TestServerIgnoresRange(t *testing.T) {
	data := make([]byte, 100_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, length := range []bool{true, false} {
		t.Run(fmt.Sprintf("ContentLength=%v", length), func(t *testing.T) {
			srv := serve(t, wholeServer(data, length))
			s := newStore(t, Config{URL: srv.URL})
			oi, err := s.Stat(context.Background(), "ab/cd/x")
			if err != nil || oi.Size != int64(len(data)) {
				t.Fatalf("Stat: %+v, %v", oi, err)
			}
			for _, r := range []struct{ off, n int64 }{{0, -1}, {0, 1}, {1000, 4096}, {99_999, 1}, {50_000, -1}, {99_000, 5000}, {100_000, -1}, {100_000, 10}} {
				got, err := testutil.ReadAll(t, s, "ab/cd/x", r.off, r.n)
				end := int64(len(data))
				if r.n >= 0 && r.off+r.n < end {
					end = r.off + r.n
				}
				if err != nil || !bytes.Equal(got, data[r.off:end]) {
					t.Errorf("read off=%d n=%d: %d bytes, %v; want %d bytes", r.off, r.n, len(got), err, end-r.off)
				}
			}
			if _, err := testutil.ReadAll(t, s, "ab/cd/x", 100_001, 10); err == nil {
				t.Error("read past the end succeeded")
			}
		})
	}
}

func TestStatWithoutContentLength(t *testing.T) {
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	data := []byte("0123456789")
	for _, tc := range []struct {
		name   string
		head   int // status of HEAD answers, sent without Content-Length
		data   []byte
		expect int64
	}{
		{"HEAD without length", http.StatusOK, data, 10},
		{"HEAD not allowed", http.StatusMethodNotAllowed, data, 10},
		{"empty object", http.StatusOK, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodHead {
					w.WriteHeader(tc.head)
					return
				}
				http.ServeContent(w, r, "", mtime, bytes.NewReader(tc.data))
			}))
			s := newStore(t, Config{URL: srv.URL})
			oi, err := s.Stat(context.Background(), "ab/cd/x")
			if err != nil || oi.Size != tc.expect || !oi.ModTime.Equal(mtime) {
				t.Fatalf("Stat = %+v, %v; want size %d, mtime %v", oi, err, tc.expect, mtime)
			}
		})
	}
}

func TestEmptyAndEdgeRanges(t *testing.T) {
	dir := t.TempDir()
	seed(t, dir, "ab/cd/empty", nil)
	seed(t, dir, "ab/cd/abc", []byte("abc"))
	srv := serve(t, http.FileServer(http.Dir(dir)))
	s := newStore(t, Config{URL: srv.URL})
	for _, tc := range []struct {
		key    string
		off, n int64
		want   string
		ok     bool
	}{
		{"ab/cd/empty", 0, -1, "", true},
		{"ab/cd/empty", 0, 10, "", true}, // 416 from the server
		{"ab/cd/empty", 0, 0, "", true},
		{"ab/cd/empty", 1, -1, "", false},
		{"ab/cd/empty", 1, 0, "", false},
		{"ab/cd/abc", 3, -1, "", true},
		{"ab/cd/abc", 3, 5, "", true},
		{"ab/cd/abc", 3, 0, "", true},
		{"ab/cd/abc", 1, 1 << 62, "bc", true},
		{"ab/cd/abc", 1, -1, "bc", true},
		{"ab/cd/abc", 4, -1, "", false},
		{"ab/cd/abc", 4, 1, "", false},
		{"ab/cd/abc", -1, 1, "", false},
	} {
		got, err := testutil.ReadAll(t, s, tc.key, tc.off, tc.n)
		if (err == nil) != tc.ok || string(got) != tc.want {
			t.Errorf("read %s off=%d n=%d: %q, %v; want %q ok=%v", tc.key, tc.off, tc.n, got, err, tc.want, tc.ok)
		}
	}
	if _, err := s.Open(context.Background(), "ab/cd/missing", 0, 0); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Open of a missing key for 0 bytes: %v, want ErrNotExist", err)
	}
}

func TestShortBody(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100) // 1000 bytes
	handlers := map[string]http.HandlerFunc{
		// Declares all 1000 bytes, sends 500 and hangs up.
		"lying Content-Length": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			if r.Method != http.MethodHead {
				w.Write(data[:500])
			}
		},
		// Promises the range asked for, sends half of it in a chunked body
		// that ends cleanly.
		"short 206 chunked": func(w http.ResponseWriter, r *http.Request) {
			first, last := int64(0), int64(len(data)-1)
			if rng, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes="); ok {
				a, b, _ := strings.Cut(rng, "-")
				first, _ = strconv.ParseInt(a, 10, 64)
				if b != "" {
					last, _ = strconv.ParseInt(b, 10, 64)
				}
			}
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.(http.Flusher).Flush()
			w.Write(data[first : first+(last-first+1)/2])
		},
		// A 206 declaring the right length but cut short.
		"lying 206": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 100-999/%d", len(data)))
			w.Header().Set("Content-Length", "900")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[100:400])
		},
	}
	for name, h := range handlers {
		t.Run(name, func(t *testing.T) {
			srv := serve(t, h)
			s := newStore(t, Config{URL: srv.URL})
			ranges := []struct{ off, n int64 }{{0, -1}, {0, 1000}, {100, -1}, {100, 800}}
			if name == "lying 206" {
				ranges = ranges[2:]
			}
			for _, r := range ranges {
				got, err := testutil.ReadAll(t, s, "ab/cd/x", r.off, r.n)
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("read off=%d n=%d: %d bytes, %v; want io.ErrUnexpectedEOF", r.off, r.n, len(got), err)
				}
				if !bytes.Equal(got, data[r.off:r.off+int64(len(got))]) {
					t.Errorf("read off=%d n=%d: the bytes before the error are wrong", r.off, r.n)
				}
			}
		})
	}
}

// TestBadPartial: a 206 that is not the range asked for is an error, never
// the wrong bytes.
func TestBadPartial(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100)
	for name, h := range map[string]http.HandlerFunc{
		"from the start": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-999/1000")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data)
		},
		"no Content-Range": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[100:110])
		},
		"range capped": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 100-104/1000")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[100:105])
		},
		"bad Content-Range": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 100-90/1000")
			w.WriteHeader(http.StatusPartialContent)
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := newStore(t, Config{URL: serve(t, h).URL})
			for _, n := range []int64{10, -1} {
				rc, err := s.Open(context.Background(), "ab/cd/x", 100, n)
				if err == nil {
					rc.Close()
					t.Errorf("Open off=100 n=%d succeeded", n)
				}
			}
		})
	}
}

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in                 string
		first, last, total int64
		ok                 bool
	}{
		{"bytes 0-0/10", 0, 0, 10, true},
		{"bytes 5-9/10", 5, 9, 10, true},
		{"bytes 5-9/*", 5, 9, -1, true},
		{"bytes */0", -1, -1, 0, true},
		{"bytes 5-10/10", 0, 0, 0, false},
		{"bytes 9-5/10", 0, 0, 0, false},
		{"bytes 5-9", 0, 0, 0, false},
		{"items 5-9/10", 0, 0, 0, false},
		{"", 0, 0, 0, false},
		{"bytes -1-9/10", 0, 0, 0, false},
	} {
		first, last, total, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || (tc.ok && (first != tc.first || last != tc.last || total != tc.total)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v", tc.in, first, last, total, err)
		}
	}
}

func TestStatusMapping(t *testing.T) {
	ctx := context.Background()
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(filepath.Base(r.URL.Path))
		http.Error(w, "no", code)
	}))
	s := newStore(t, Config{URL: srv.URL + "/m/"})
	for _, tc := range []struct {
		code     int
		notExist bool
		denied   bool
	}{
		{404, true, false}, {410, true, false},
		{401, false, true}, {403, false, true},
		{500, false, false}, {503, false, false}, {400, false, false},
	} {
		key := "ab/cd/" + strconv.Itoa(tc.code)
		_, statErr := s.Stat(ctx, key)
		_, openErr := s.Open(ctx, key, 0, -1)
		for _, err := range []error{statErr, openErr} {
			if err == nil {
				t.Errorf("%d: no error", tc.code)
				continue
			}
			msg := err.Error()
			if errors.Is(err, backend.ErrNotExist) != tc.notExist {
				t.Errorf("%d: %q: ErrNotExist = %v, want %v", tc.code, msg, !tc.notExist, tc.notExist)
			}
			if errors.Is(err, fs.ErrPermission) != tc.denied || strings.Contains(msg, "access denied") != tc.denied {
				t.Errorf("%d: %q: access denied = %v", tc.code, msg, !tc.denied)
			}
			if !strings.Contains(msg, strconv.Itoa(tc.code)) || !strings.Contains(msg, srv.URL+"/m/"+key) {
				t.Errorf("%d: %q does not name the status and the URL", tc.code, msg)
			}
		}
	}
}

func TestSecretsNotInErrors(t *testing.T) {
	ctx := context.Background()
	const secret = "SECRET"
	var errs []error
	check := func(err error) {
		t.Helper()
		if err == nil {
			t.Error("expected an error")
			return
		}
		errs = append(errs, err)
	}
	codes := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(filepath.Base(r.URL.Path))
		if code == 0 {
			w.Header().Set("Content-Length", "10")
			w.WriteHeader(200)
			w.Write([]byte("short"))
			return
		}
		http.Error(w, "no", code)
	}))
	tlsSrv := serveTLS(t, http.NotFoundHandler())
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	host := strings.TrimPrefix(codes.URL, "http://")

	tok := writeFile(t, "token", "tok-"+secret+"-1")
	netrc := writeFile(t, "netrc", "machine 127.0.0.1 login user-"+secret+" password pw-"+secret+"-2\n")
	stores := []*Store{
		newStore(t, Config{URL: codes.URL + "/?sig=" + secret, BearerTokenFile: tok}),
		newStore(t, Config{URL: codes.URL, Netrc: netrc}),
		newStore(t, Config{URL: "http://u:pw-" + secret + "@" + host + "/x/?token=" + secret}),
		newStore(t, Config{URL: tlsSrv.URL + "/?sig=" + secret, BearerTokenFile: tok}),
		newStore(t, Config{URL: closed.URL + "/?sig=" + secret, BearerTokenFile: tok}),
	}
	for _, s := range stores {
		if strings.Contains(s.Location(), secret) {
			t.Errorf("Location %q holds a secret", s.Location())
		}
		for _, code := range []string{"401", "403", "404", "500"} {
			_, err := s.Stat(ctx, "ab/cd/"+code)
			check(err)
			_, err = s.Open(ctx, "ab/cd/"+code, 3, 5)
			check(err)
		}
		if _, err := s.Stat(ctx, "ab/cd/0"); err == nil {
			_, err := testutil.ReadAll(t, s, "ab/cd/0", 0, -1)
			check(err)
		}
	}
	for _, cfg := range []Config{
		{URL: "ftp://u:pw-" + secret + "@host/?sig=" + secret},
		{URL: "http://u:pw-" + secret + "@host:bad/"},
		{URL: "http://host:bad/?sig=" + secret},
		{URL: "://u:pw-" + secret + "@host/"},
		{URL: "/u:pw-" + secret + "@host/?sig=" + secret},
		{URL: "u:pw-" + secret + "@host/"},
		{URL: "https:///pw-" + secret + "@x"},
	} {
		_, err := New(cfg)
		check(err)
	}
	for _, err := range errs {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q holds a secret", err)
		}
	}
	t.Logf("checked %d errors, e.g. %q", len(errs), errs[0])
}

func TestHangingServer(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			// Headers and a first byte, then nothing.
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusOK)
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() {
		close(release)
		srv.Close()
	})
	s := newStore(t, Config{URL: srv.URL})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := s.Stat(ctx, "ab/cd/x")
	if err == nil {
		t.Fatal("Stat of a hanging server succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stat error %v does not wrap context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Stat returned after %v", d)
	}

	// A body that stops coming fails its Read once the context ends.
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start = time.Now()
	rc, err := s.Open(ctx, "ab/cd/x", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err == nil || string(got) != "x" {
		t.Fatalf("read of a stalled body: %q, %v; want \"x\" and an error", got, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("read returned after %v", d)
	}
}

// TestKeepAlive checks that reads, ranged reads and misses leave their
// connection reusable.
func TestKeepAlive(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := bytes.Repeat([]byte("abcdefgh"), 10_000)
	seed(t, dir, "ab/cd/x", data)
	srv := httptest.NewUnstartedServer(http.FileServer(http.Dir(dir)))
	var mu sync.Mutex
	conns := 0
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s := newStore(t, Config{URL: srv.URL})
	for range 5 {
		if _, err := s.Stat(ctx, "ab/cd/x"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, "ab/cd/missing"); !errors.Is(err, backend.ErrNotExist) {
			t.Fatal(err)
		}
		if _, err := s.Open(ctx, "ab/cd/missing", 0, -1); !errors.Is(err, backend.ErrNotExist) {
			t.Fatal(err)
		}
		for _, r := range []struct{ off, n int64 }{{0, -1}, {10, 100}, {1000, -1}} {
			if _, err := testutil.ReadAll(t, s, "ab/cd/x", r.off, r.n); err != nil {
				t.Fatal(err)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if conns != 1 {
		t.Errorf("%d connections, want 1", conns)
	}
}

func TestReadOnly(t *testing.T) {
	s := newStore(t, Config{URL: "http://127.0.0.1:1/"})
	ctx := context.Background()
	if err := s.Create(ctx, "ab/cd/x", strings.NewReader("x"), 1); !errors.Is(err, backend.ErrReadOnly) {
		t.Errorf("Create = %v", err)
	}
	if err := s.List(ctx, "", func(backend.ObjectInfo) error { return nil }); !errors.Is(err, backend.ErrNotSupported) {
		t.Errorf("List = %v", err)
	}
}

func TestReadOnlyThroughDecorators(t *testing.T) {
	s, err := New(Config{URL: "http://127.0.0.1:1/x"})
	if err != nil {
		t.Fatal(err)
	}
	if !backend.IsReadOnly(&backend.Timeout{Store: s, D: time.Second}) {
		t.Fatal("an HTTP store behind a decorator is not reported read-only")
	}
}

// TestRedirectCredentials checks that credentials go only to the configured
// origin: a redirect to another port of the same host (or another scheme)
// arrives without them, a redirect within the origin keeps them, and a
// redirect from https to http is refused before anything is sent.
func TestRedirectCredentials(t *testing.T) {
	ctx := context.Background()
	other := &authServer{}
	otherSrv := serve(t, other)
	same := &authServer{}
	mirror := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/moved/"):
			same.ServeHTTP(w, r)
		case strings.HasPrefix(r.URL.Path, "/local/"):
			http.Redirect(w, r, "/moved"+r.URL.Path, http.StatusFound)
		default:
			http.Redirect(w, r, otherSrv.URL+r.URL.Path, http.StatusFound)
		}
	}))
	if strings.TrimPrefix(mirror.URL, "http://127.0.0.1:") == strings.TrimPrefix(otherSrv.URL, "http://127.0.0.1:") {
		t.Fatal("both servers on one port")
	}
	tok := writeFile(t, "token", "s3cret-token")
	netrc := writeFile(t, "netrc", "machine 127.0.0.1 login alice password s3cret-pw\n")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"bearer", Config{URL: mirror.URL, BearerTokenFile: tok}, "Bearer s3cret-token"},
		{"netrc", Config{URL: mirror.URL, Netrc: netrc}, "Basic YWxpY2U6czNjcmV0LXB3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, tc.cfg)
			if _, err := s.Stat(ctx, "ab/cd/x"); err != nil {
				t.Fatal(err)
			}
			if got := other.last(); got != "" {
				t.Errorf("HEAD redirected to another port carried Authorization %q", got)
			}
			rc, err := s.Open(ctx, "ab/cd/x", 0, -1) // authServer sends no body: the request is what counts
			if err != nil {
				t.Fatal(err)
			}
			rc.Close()
			if got := other.last(); got != "" {
				t.Errorf("GET redirected to another port carried Authorization %q", got)
			}
			if _, err := s.Stat(ctx, "local/cd/x"); err != nil {
				t.Fatal(err)
			}
			if got := same.last(); got != tc.want {
				t.Errorf("redirect within the origin: Authorization %q, want %q", got, tc.want)
			}
		})
	}

	t.Run("https to http", func(t *testing.T) {
		plain := &authServer{}
		plainSrv := serve(t, plain)
		tlsSrv := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, plainSrv.URL+r.URL.Path+"?sig=hidden", http.StatusFound)
		}))
		bundle := writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})))
		s := newStore(t, Config{URL: tlsSrv.URL + "/all?q=secretquery", BearerTokenFile: tok, CABundle: bundle})
		_, err := s.Stat(ctx, "ab/cd/x")
		if err == nil {
			t.Fatal("a redirect from https to http was followed")
		}
		msg := err.Error()
		for _, want := range []string{"https to http", tlsSrv.URL + "/all/ab/cd/x", plainSrv.URL + "/all/ab/cd/x"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not mention %q", msg, want)
			}
		}
		for _, secret := range []string{"secretquery", "hidden", "s3cret"} {
			if strings.Contains(msg, secret) {
				t.Errorf("error %q shows %q", msg, secret)
			}
		}
		if got := plain.last(); got != "<no request>" {
			t.Errorf("the http server got a request (Authorization %q)", got)
		}
	})
}

// pacedServer sends a body of size bytes in chunks of chunk bytes, one per
// tick, until the body is done or the client goes away.
func pacedServer(t *testing.T, size, chunk int, tick time.Duration) *httptest.Server {
	return serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		tk := time.NewTicker(tick)
		defer tk.Stop()
		buf := bytes.Repeat([]byte("s"), chunk)
		for sent := 0; sent < size; sent += chunk {
			select {
			case <-tk.C:
			case <-r.Context().Done():
				return
			}
			if _, err := w.Write(buf[:min(chunk, size-sent)]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}))
}

// TestTrickleCutOff checks the minimum-progress rule of backend.Timeout on
// a real trickling server: a byte every 100 ms (of a 1 MiB body, which
// would take 29 hours) fails the read with a timeout error soon after the
// 500 ms window, while a paced server above the minimum (64 KiB per
// window) delivers its whole body.
func TestTrickleCutOff(t *testing.T) {
	const d = 500 * time.Millisecond
	trickle := &backend.Timeout{Store: newStore(t, Config{URL: pacedServer(t, 1<<20, 1, 100*time.Millisecond).URL}), D: d}
	start := time.Now()
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	t.Cleanup(func() { cancel(); <-finished }) // before the server closes
	go func() {
		defer close(finished)
		rc, err := trickle.Open(ctx, "ab/cd/x", 0, -1)
		if err != nil {
			done <- err
			return
		}
		defer rc.Close()
		n, err := io.Copy(io.Discard, rc)
		if err == nil {
			err = fmt.Errorf("read all %d bytes without an error", n)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("trickled read: %v, want an error wrapping context.DeadlineExceeded", err)
		}
		if !strings.Contains(err.Error(), "ab/cd/x") {
			t.Errorf("error %q does not name the object", err)
		}
		t.Logf("cut off after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(20 * d):
		t.Fatalf("a reader of a trickling store still blocked after %v (timeout %v)", 20*d, d)
	}

	// 64 KiB every 25 ms for about 1.2 s: a window (1 s) needs one of the
	// 40 chunks due in it, a margin that holds on a loaded machine.
	const size = 3 << 20
	steady := &backend.Timeout{Store: newStore(t, Config{URL: pacedServer(t, size, 64<<10, 25*time.Millisecond).URL}), D: time.Second}
	got, err := testutil.ReadAll(t, steady, "ab/cd/x", 0, -1)
	if err != nil || len(got) != size {
		t.Fatalf("steady server: %d bytes, %v; want %d bytes", len(got), err, size)
	}
}
