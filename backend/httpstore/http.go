// Package httpstore is the read-only store of a plain HTTP(S) sstate mirror
// (http:// or https:// URLs), such as the public Yocto sstate mirror: objects
// are files under a base URL in the SSTATE_DIR layout. It owns the mapping of
// HEAD and ranged GET answers to the backend contract, authentication (a
// bearer token file, re-read when rotated, or netrc basic auth) and the TLS
// trust of the mirror. Listing and writing are refused. It is not called
// http so that it does not shadow net/http.
package httpstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

// Config describes a mirror.
type Config struct {
	// URL is the mirror's base URL, http or https. Userinfo in it is sent as
	// basic auth and its query is sent with every request; neither appears
	// in Location or in errors.
	URL string
	// BearerTokenFile holds a token sent as "Authorization: Bearer"; the
	// file is re-read whenever it changes. It takes precedence over basic
	// auth.
	BearerTokenFile string
	// Netrc is the netrc file searched for the URL's host when there is no
	// token and no userinfo; "" means $NETRC, or ~/.netrc if it exists.
	Netrc string
	// CABundle is a PEM file of CA certificates trusted in addition to the
	// system roots.
	CABundle string
	// MaxConns is the number of idle keep-alive connections kept to the
	// mirror; 0 means DefaultMaxConns.
	MaxConns int
	// UserAgent is sent with every request; "" means DefaultUserAgent.
	UserAgent string
}

// Defaults for Config.
const (
	DefaultMaxConns  = 64
	DefaultUserAgent = "sstatefs"
)

// Store reads objects from an HTTP(S) mirror.
type Store struct {
	client    *http.Client
	base      *url.URL // no userinfo, no fragment; Path ends in "/"
	location  string
	userAgent string

	// At most one of token and basic is set.
	token          *tokenFile
	basic          bool
	user, password string
}

var _ backend.Store = (*Store)(nil)

// New returns a store for the mirror cfg describes. Its errors name the
// input at fault and never contain a secret.
func New(cfg Config) (*Store, error) {
	base, userinfo, err := parseBaseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	s := &Store{
		base:      base,
		location:  strings.TrimSuffix(backend.RedactURL(base.String()), "/"),
		userAgent: cfg.UserAgent,
	}
	if s.userAgent == "" {
		s.userAgent = DefaultUserAgent
	}

	switch {
	case cfg.BearerTokenFile != "":
		s.token = &tokenFile{path: cfg.BearerTokenFile}
		if _, err := s.token.get(); err != nil {
			return nil, err
		}
	case userinfo != nil:
		s.basic = true
		s.user = userinfo.Username()
		s.password, _ = userinfo.Password()
	default:
		e, ok, err := netrcCredentials(cfg.Netrc, base.Hostname())
		if err != nil {
			return nil, err
		}
		if ok && (e.login != "" || e.password != "") {
			s.basic, s.user, s.password = true, e.login, e.password
		}
	}

	maxConns := cfg.MaxConns
	switch {
	case maxConns < 0:
		return nil, fmt.Errorf("http store %s: MaxConns %d is negative", s.location, maxConns)
	case maxConns == 0:
		maxConns = DefaultMaxConns
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = maxConns
	tr.MaxIdleConns = max(tr.MaxIdleConns, maxConns)
	// Objects are already compressed, and a transparently decompressed body
	// would not match Content-Length or the ranges asked for.
	tr.DisableCompression = true
	if cfg.CABundle != "" {
		roots, err := loadCABundle(cfg.CABundle)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	s.client = &http.Client{Transport: tr, CheckRedirect: checkRedirect}
	return s, nil
}

// parseBaseURL checks a mirror URL and splits off its userinfo.
func parseBaseURL(raw string) (*url.URL, *url.Userinfo, error) {
	// Errors show the URL without userinfo and query, or not at all when it
	// may still hold a password (url.Parse quotes its whole input).
	hidden := strings.Contains(raw, "@")
	u, err := url.Parse(raw)
	if err != nil {
		if hidden || strings.Contains(raw, "?") {
			return nil, nil, errors.New("http store URL: cannot be parsed (not shown: it may hold credentials)")
		}
		return nil, nil, fmt.Errorf("http store URL %q: %v", raw, cause(err))
	}
	bad := func(why string) error {
		if hidden {
			return fmt.Errorf("http store URL (not shown: it may hold credentials): %s", why)
		}
		return fmt.Errorf("http store URL %q: %s", backend.RedactURL(u.String()), why)
	}
	userinfo := u.User
	u.User = nil
	u.Fragment, u.RawFragment = "", ""
	switch {
	case u.Scheme == "":
		return nil, nil, bad("has no scheme (http:// or https://)")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, nil, bad("scheme must be http or https")
	case u.Host == "":
		return nil, nil, bad("has no host")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		if u.RawPath != "" {
			u.RawPath += "/"
		}
	}
	return u, userinfo, nil
}

// cause strips the *url.Error net/http and net/url wrap errors in: it
// quotes the URL with its query (and that of any redirect target).
func cause(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// checkRedirect follows at most 10 redirects, refuses any step from https
// to http, and drops the credentials (the Authorization header, which
// carries both the bearer token and netrc's basic auth) from a request to
// another origin than the configured one: net/http keeps them for the same
// host name on another port or scheme, and for subdomains.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	prev := via[len(via)-1].URL
	if (prev.Scheme == "https" || via[0].URL.Scheme == "https") && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing a redirect from https to http: %s redirected to %s", backend.RedactURL(prev.String()), backend.RedactURL(req.URL.String()))
	}
	if origin(req.URL) != origin(via[0].URL) {
		req.Header.Del("Authorization")
	}
	return nil
}

// origin is a URL's scheme, host name and port (the default one when it
// has none), lowercase.
func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "http":
			port = "80"
		case "https":
			port = "443"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Hostname()) + ":" + port
}

// loadCABundle returns the system roots plus every certificate in the PEM
// file at path.
func loadCABundle(path string) (*x509.CertPool, error) {
	_, certs, err := backend.ReadCABundle(path)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// tokenFile is a bearer token kept in a file that sidecars rotate.
type tokenFile struct {
	path string

	mu    sync.Mutex  // protects fi and token
	fi    os.FileInfo // of the file token was read from; nil before the first read
	token string
}

// get returns the token, re-reading the file when its identity, size or
// mtime changed. Once a token was read, a file that is briefly missing,
// unreadable or empty (a rotation in progress) leaves the last token in use.
func (t *tokenFile) get() (string, error) {
	fi, statErr := os.Stat(t.path)
	t.mu.Lock()
	defer t.mu.Unlock()
	if statErr == nil && t.fi != nil && os.SameFile(fi, t.fi) &&
		fi.Size() == t.fi.Size() && fi.ModTime().Equal(t.fi.ModTime()) {
		return t.token, nil
	}
	tok, err := t.read(statErr)
	if err != nil {
		if t.fi != nil {
			return t.token, nil
		}
		return "", err
	}
	t.fi, t.token = fi, tok
	return tok, nil
}

// read reads and checks the token; the caller holds mu.
func (t *tokenFile) read(statErr error) (string, error) {
	if statErr != nil {
		return "", fmt.Errorf("bearer token file: %w", statErr)
	}
	data, err := os.ReadFile(t.path)
	if err != nil {
		return "", fmt.Errorf("bearer token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("bearer token file %s is empty", t.path)
	}
	for _, c := range []byte(tok) {
		if c < 0x20 || c == 0x7f {
			return "", fmt.Errorf("bearer token file %s: token contains control characters", t.path)
		}
	}
	return tok, nil
}

// Location implements backend.Store: the base URL without userinfo or query.
func (s *Store) Location() string { return s.location }

// ReadOnly implements backend.ReadOnlyStore: a mirror never takes writes.
func (s *Store) ReadOnly() bool { return true }

// objectURL returns the URL of key, escaped per path segment, with the base
// URL's query.
func (s *Store) objectURL(key string) *url.URL {
	u := *s.base
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	u.Path = s.base.Path + key
	u.RawPath = s.base.EscapedPath() + strings.Join(segs, "/")
	return &u
}

// do sends one request with the store's headers. Its errors name the URL
// without secrets and wrap the transport's cause (context errors, TLS
// verification errors).
func (s *Store) do(ctx context.Context, method string, u *url.URL, rangeHeader string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v", method, backend.RedactURL(u.String()), cause(err))
	}
	req.Header.Set("User-Agent", s.userAgent)
	if rangeHeader != "" {
		req.Header.Set("Range", rangeHeader)
	}
	switch {
	case s.token != nil:
		tok, err := s.token.get()
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	case s.basic:
		req.SetBasicAuth(s.user, s.password)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, backend.RedactURL(u.String()), cause(err))
	}
	return resp, nil
}

// statusError is an answer the store cannot use. It wraps
// backend.ErrNotExist for 404 and 410, fs.ErrPermission for 401 and 403.
type statusError struct {
	method, url string
	code        int
}

func (e *statusError) Error() string {
	status := strconv.Itoa(e.code) + " " + http.StatusText(e.code)
	switch e.code {
	case http.StatusNotFound, http.StatusGone:
		return fmt.Sprintf("%s %s: %s (%s)", e.method, e.url, backend.ErrNotExist, status)
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Sprintf("%s %s: access denied (%s)", e.method, e.url, status)
	}
	return fmt.Sprintf("%s %s: unexpected status %s", e.method, e.url, status)
}

func (e *statusError) Unwrap() error {
	switch e.code {
	case http.StatusNotFound, http.StatusGone:
		return backend.ErrNotExist
	case http.StatusUnauthorized, http.StatusForbidden:
		return fs.ErrPermission
	}
	return nil
}

// discard reads a little of an unwanted body, so that a short one (an
// error page) leaves its connection reusable, and closes it.
func discard(resp *http.Response) {
	io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

// fail closes resp and returns the error for its status.
func fail(resp *http.Response, method string, u *url.URL) error {
	discard(resp)
	return &statusError{method: method, url: backend.RedactURL(u.String()), code: resp.StatusCode}
}

func lastModified(resp *http.Response) time.Time {
	t, err := http.ParseTime(resp.Header.Get("Last-Modified"))
	if err != nil {
		return time.Time{}
	}
	return t
}

// parseContentRange parses "bytes first-last/total", "bytes */total" and
// "bytes first-last/*"; unknown parts are -1.
func parseContentRange(s string) (first, last, total int64, err error) {
	bad := fmt.Errorf("bad Content-Range %q", s)
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	first, last, total = -1, -1, -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total < 0 {
			return 0, 0, 0, bad
		}
	}
	if rng == "*" {
		return first, last, total, nil
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if first, err = strconv.ParseInt(a, 10, 64); err != nil || first < 0 {
		return 0, 0, 0, bad
	}
	if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first || (total >= 0 && last >= total) {
		return 0, 0, 0, bad
	}
	return first, last, total, nil
}

// Stat implements backend.Store with a HEAD request; a mirror that answers
// HEAD without a size (or refuses HEAD) is asked for the first byte instead.
func (s *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	if err := backend.CheckKey(key); err != nil {
		return backend.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.ObjectInfo{}, err
	}
	u := s.objectURL(key)
	resp, err := s.do(ctx, http.MethodHead, u, "")
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 {
			return backend.ObjectInfo{Key: key, Size: resp.ContentLength, ModTime: lastModified(resp)}, nil
		}
		return s.probe(ctx, key, u)
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return s.probe(ctx, key, u)
	}
	return backend.ObjectInfo{}, fail(resp, http.MethodHead, u)
}

// probe stats key with a GET of its first byte.
func (s *Store) probe(ctx context.Context, key string, u *url.URL) (backend.ObjectInfo, error) {
	resp, err := s.do(ctx, http.MethodGet, u, "bytes=0-0")
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	oi := backend.ObjectInfo{Key: key, ModTime: lastModified(resp)}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		discard(resp)
		_, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && total < 0 {
			err = errors.New("Content-Range gives no size")
		}
		if err != nil {
			return backend.ObjectInfo{}, fmt.Errorf("GET %s: %w", backend.RedactURL(u.String()), err)
		}
		oi.Size = total
	case http.StatusRequestedRangeNotSatisfiable:
		// The first byte does not exist: the object is empty.
		discard(resp)
	case http.StatusOK:
		// The range was ignored: the whole object is coming.
		if resp.ContentLength >= 0 {
			discard(resp)
			oi.Size = resp.ContentLength
			break
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return backend.ObjectInfo{}, fmt.Errorf("GET %s: %w", backend.RedactURL(u.String()), err)
		}
		oi.Size = n
	default:
		return backend.ObjectInfo{}, fail(resp, http.MethodGet, u)
	}
	return oi, nil
}

func outside(key string, offset, size int64) error {
	return fmt.Errorf("%s: offset %d outside object of %d bytes", key, offset, size)
}

// Open implements backend.Store with a ranged GET. A mirror that ignores
// the range (200) is read from the start and the first offset bytes are
// skipped.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := backend.CheckKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("%s: negative offset %d", key, offset)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if length == 0 {
		// Nothing to read, but the key and offset must still be valid.
		oi, err := s.Stat(ctx, key)
		if err != nil {
			return nil, err
		}
		if offset > oi.Size {
			return nil, outside(key, offset, oi.Size)
		}
		return http.NoBody, nil
	}
	if length > 0 && offset > math.MaxInt64-length {
		length = -1
	}
	u := s.objectURL(key)
	var rangeHeader string
	switch {
	case length > 0:
		rangeHeader = fmt.Sprintf("bytes=%d-%d", offset, offset+length-1)
	case offset > 0:
		rangeHeader = fmt.Sprintf("bytes=%d-", offset)
	}
	resp, err := s.do(ctx, http.MethodGet, u, rangeHeader)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		return s.openPartial(resp, u, offset, length)
	case http.StatusOK:
		return s.openWhole(key, resp, u, offset, length)
	case http.StatusRequestedRangeNotSatisfiable:
		// The offset is at or past the end; at the end (an empty object
		// read from 0, say) the answer is no bytes.
		discard(resp)
		_, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || total < 0 {
			oi, err := s.Stat(ctx, key)
			if err != nil {
				return nil, err
			}
			total = oi.Size
		}
		if offset == total {
			return http.NoBody, nil
		}
		return nil, outside(key, offset, total)
	}
	return nil, fail(resp, http.MethodGet, u)
}

// openPartial returns the body of a 206 answer to a request from offset.
func (s *Store) openPartial(resp *http.Response, u *url.URL, offset, length int64) (io.ReadCloser, error) {
	first, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err == nil && first < 0 {
		err = errors.New("206 answer without a byte range")
	}
	if err == nil && first != offset {
		err = fmt.Errorf("asked for bytes from %d, got bytes %d-%d", offset, first, last)
	}
	// want is what the caller is owed: the range asked for, cut at the end
	// of the object.
	want := length
	if total >= 0 && (want < 0 || offset+want > total) {
		want = total - offset
	}
	if err == nil && want >= 0 && last-first+1 < want {
		err = fmt.Errorf("asked for %d bytes from %d, got bytes %d-%d", want, offset, first, last)
	}
	if err != nil {
		discard(resp)
		return nil, fmt.Errorf("GET %s: %w", backend.RedactURL(u.String()), err)
	}
	if want < 0 {
		want = last - first + 1
	}
	return &backend.Body{RC: resp.Body, What: "GET " + backend.RedactURL(u.String()), Left: want}, nil
}

// openWhole returns the part of a 200 answer (the whole object) from offset.
func (s *Store) openWhole(key string, resp *http.Response, u *url.URL, offset, length int64) (io.ReadCloser, error) {
	total := resp.ContentLength
	if total >= 0 && offset > total {
		discard(resp)
		return nil, outside(key, offset, total)
	}
	if offset > 0 {
		n, err := io.CopyN(io.Discard, resp.Body, offset)
		if err == io.EOF {
			resp.Body.Close()
			return nil, outside(key, offset, n)
		}
		if err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: %w", backend.RedactURL(u.String()), err)
		}
	}
	want, atMost := length, false
	switch {
	case total >= 0 && (want < 0 || offset+want > total):
		want = total - offset
	case total < 0:
		// The size is unknown, so a body ending early is the object's end.
		atMost = true
	}
	return &backend.Body{RC: resp.Body, What: "GET " + backend.RedactURL(u.String()), Left: want, AtMost: atMost}, nil
}

// List implements backend.Store: a plain HTTP mirror cannot be listed.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	return fmt.Errorf("list %s: %w", s.location, backend.ErrNotSupported)
}

// Create implements backend.Store: the mirror is read-only.
func (s *Store) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return fmt.Errorf("%s: %w", key, backend.ErrReadOnly)
}

// Put implements backend.Store: the mirror is read-only.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return fmt.Errorf("%s: %w", key, backend.ErrReadOnly)
}

// Delete implements backend.Store: the mirror is read-only.
func (s *Store) Delete(ctx context.Context, key string) error {
	return fmt.Errorf("%s: %w", key, backend.ErrReadOnly)
}
