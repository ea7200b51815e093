package backend

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReadCABundle(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sstatefs test CA"},
		NotBefore:             time.Unix(0, 0),
		NotAfter:              time.Unix(1<<33, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyBlock := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42}})
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})

	dir := t.TempDir()
	write := func(name string, parts ...[]byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Join(parts, nil), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name  string
		path  string
		certs int
		err   []string // substrings of the error; nil: no error
	}{
		{"one certificate", write("one.pem", cert), 1, nil},
		{"two and other blocks", write("two.pem", []byte("comment\n"), keyBlock, cert, cert), 2, nil},
		{"missing", filepath.Join(dir, "missing.pem"), 0, []string{"CA bundle", "missing.pem"}},
		{"empty", write("empty.pem"), 0, []string{"empty.pem", "no PEM certificate"}},
		{"not PEM", write("text.pem", []byte("hello\n")), 0, []string{"text.pem", "no PEM certificate"}},
		{"no certificate block", write("key.pem", keyBlock), 0, []string{"key.pem", "no PEM certificate"}},
		// A bundle the system's parser would half accept is refused whole.
		{"bad certificate after a good one", write("bad.pem", cert, bad), 0, []string{"bad.pem", "certificate 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, certs, err := ReadCABundle(tc.path)
			if tc.err == nil {
				if err != nil || len(certs) != tc.certs || len(data) == 0 {
					t.Fatalf("ReadCABundle = %d bytes, %d certificates, %v; want %d certificates", len(data), len(certs), err, tc.certs)
				}
				return
			}
			if err == nil {
				t.Fatalf("ReadCABundle(%s) = %d certificates, want an error", tc.path, len(certs))
			}
			for _, w := range tc.err {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
