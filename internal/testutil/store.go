package testutil

import (
	"context"
	"crypto/rand"
	"io"
	"testing"
)

// Opener is the reading half of backend.Store (testutil does not import
// backend, so that backend's own tests may use it).
type Opener interface {
	Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
}

// ReadAll opens length bytes of key from offset (length < 0: to the end) and reads
// them whole.
func ReadAll(t testing.TB, s Opener, key string, offset, length int64) ([]byte, error) {
	t.Helper()
	rc, err := s.Open(context.Background(), key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// RandBytes returns n random bytes.
func RandBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
