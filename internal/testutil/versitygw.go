// Package testutil holds helpers shared by the tests of several packages:
// real servers started for a test and stopped when it ends.
package testutil

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"go/build"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// VersitygwInstall is how to install the S3 server the tests use.
const VersitygwInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// S3Env describes a running versitygw: a real S3 server on 127.0.0.1 over a
// temporary directory. The zero value is not usable; get one from S3Server.
type S3Env struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string // us-east-1
	Dir       string // posix root: each directory below it is a bucket
	// CAFile is the PEM certificate the server's TLS certificate is signed
	// with (S3ServerTLS only; "" for plain http).
	CAFile string

	srv *s3Server
}

// s3Server is the process behind an S3Env.
type s3Server struct {
	t    testing.TB
	bin  string
	args []string
	addr string
	log  string // file collecting the server's output
	// probe checks whether the server answers.
	probe *http.Client
	url   string

	mu  sync.Mutex // protects cmd and done
	cmd *exec.Cmd  // nil while stopped
	// done is closed when cmd has exited.
	done chan struct{}
}

var bucketSeq atomic.Int64

// FindVersitygw returns the path of the versitygw binary on PATH or in
// $(go env GOPATH)/bin, or "".
func FindVersitygw() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if p := inGopath(build.Default.GOPATH); p != "" {
		return p
	}
	// GOPATH may be set in go's own config (go env -w) only.
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		return inGopath(strings.TrimSpace(string(out)))
	}
	return ""
}

func inGopath(gopath string) string {
	for _, gp := range filepath.SplitList(gopath) {
		p := filepath.Join(gp, "bin", "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// S3Server starts versitygw serving a fresh t.TempDir() on a free port of
// 127.0.0.1 over plain http, waits until it answers, and stops it when the
// test ends. Without the binary the test is skipped, or fails if
// SSTATEFS_REQUIRE_S3=1.
func S3Server(t testing.TB) S3Env {
	t.Helper()
	return startS3Server(t, false)
}

// S3ServerTLS is S3Server over https, with a certificate for 127.0.0.1
// made for the test; Endpoint is https://127.0.0.1:PORT and CAFile the PEM
// file that certificate verifies against.
func S3ServerTLS(t testing.TB) S3Env {
	t.Helper()
	return startS3Server(t, true)
}

func startS3Server(t testing.TB, useTLS bool) S3Env {
	t.Helper()
	bin := FindVersitygw()
	if bin == "" {
		msg := "versitygw not found on PATH or in $(go env GOPATH)/bin; install it with: " + VersitygwInstall
		if os.Getenv("SSTATEFS_REQUIRE_S3") == "1" {
			t.Fatal(msg + " (SSTATEFS_REQUIRE_S3=1)")
		}
		t.Skip(msg)
	}
	addr, err := FreeAddr()
	if err != nil {
		t.Fatalf("versitygw: finding a free port: %v", err)
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	env := S3Env{
		Endpoint:  scheme + "://" + addr,
		AccessKey: "sstatefs-test-access",
		SecretKey: fmt.Sprintf("sstatefs-test-secret-%d", time.Now().UnixNano()),
		Region:    "us-east-1",
		Dir:       t.TempDir(),
	}
	work := t.TempDir()
	srv := &s3Server{
		t:     t,
		bin:   bin,
		addr:  addr,
		log:   filepath.Join(work, "versitygw.log"),
		url:   env.Endpoint + "/",
		probe: &http.Client{Timeout: time.Second},
	}
	// Global flags go before the backend subcommand.
	srv.args = []string{
		"--port", addr,
		"--access", env.AccessKey,
		"--secret", env.SecretKey,
		"--region", env.Region,
		"--keep-alive",
		"--quiet",
	}
	if useTLS {
		certFile, keyFile := filepath.Join(work, "cert.pem"), filepath.Join(work, "key.pem")
		pool, err := writeCert(certFile, keyFile)
		if err != nil {
			t.Fatalf("versitygw: making a TLS certificate: %v", err)
		}
		env.CAFile = certFile
		srv.args = append(srv.args, "--cert", certFile, "--key", keyFile)
		srv.probe.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	srv.args = append(srv.args, "posix", env.Dir)
	env.srv = srv
	t.Cleanup(func() {
		srv.stop()
		if t.Failed() && testing.Verbose() {
			if b, err := os.ReadFile(srv.log); err == nil && len(b) > 0 {
				t.Logf("versitygw output:\n%s", tail(b, 4096))
			}
		}
	})
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	return env
}

// writeCert writes a self-signed certificate for 127.0.0.1 (its own CA) and
// its key, and returns a pool that trusts it.
func writeCert(certFile, keyFile string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "sstatefs test S3 server"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return pool, nil
}

// Start restarts a stopped server on the same address and directory. It
// must be called from the goroutine of the test that created the server.
func (e S3Env) Start() {
	e.srv.t.Helper()
	if err := e.srv.start(); err != nil {
		e.srv.t.Fatal(err)
	}
}

// Stop stops the server and waits for it to exit; connections to Endpoint
// are then refused until Start.
func (e S3Env) Stop() { e.srv.stop() }

// CreateBucket creates the bucket name (at least 3 characters). In posix
// mode a bucket is a directory below Dir, owned by the root account.
func (e S3Env) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if len(name) < 3 || strings.ContainsAny(name, "/\x00") {
		t.Fatalf("bucket name %q: needs at least 3 characters and no slash", name)
	}
	if err := os.Mkdir(filepath.Join(e.Dir, name), 0o755); err != nil {
		t.Fatalf("create bucket: %v", err)
	}
}

// NewBucket creates a bucket with a fresh name and returns the name.
func (e S3Env) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("bucket-%04d", bucketSeq.Add(1))
	e.CreateBucket(t, name)
	return name
}

// FreeAddr returns a free TCP address on 127.0.0.1 to listen on.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (s *s3Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("versitygw: %w", err)
	}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so a signal to the test binary's group (^C)
	// does not race with Stop, and so Stop reaches any children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("versitygw: start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	// Ready when it answers HTTP (any status: an anonymous request is
	// refused, which proves the S3 handler is up).
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := s.probe.Get(s.url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("versitygw exited before answering on %s: %s", s.addr, s.output())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			return fmt.Errorf("versitygw did not answer on %s within 20s: %v; output: %s", s.addr, err, s.output())
		}
	}
}

func (s *s3Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// stopLocked stops the process; s.mu is held.
func (s *s3Server) stopLocked() {
	if s.cmd == nil {
		return
	}
	// versitygw's graceful shutdown waits for idle keep-alive connections
	// to close, which a client's pool may hold for 90s: give it a moment,
	// then kill it (its posix backend publishes objects atomically, so
	// this is a crash it survives).
	pgid := -s.cmd.Process.Pid
	syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(time.Second):
		syscall.Kill(pgid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}

func (s *s3Server) output() string {
	b, _ := os.ReadFile(s.log)
	return string(tail(b, 2048))
}

func tail(b []byte, n int) []byte {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return b
}
