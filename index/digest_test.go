package index

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"reflect"
	"testing"
)

// readSizes is a reader that notes the size of every Read and fails the
// test if asked to WriteTo (which would bypass the helper's buffer).
type readSizes struct {
	t     *testing.T
	r     io.Reader
	sizes []int
}

func (r *readSizes) Read(p []byte) (int, error) {
	r.sizes = append(r.sizes, len(p))
	return r.r.Read(p)
}

func (r *readSizes) WriteTo(io.Writer) (int64, error) {
	r.t.Error("WriteTo used: reads of the reader's own size, not 256 KiB")
	return 0, errors.New("WriteTo")
}

func TestDigest(t *testing.T) {
	for _, size := range []int{0, 1, 256 << 10, 256<<10 + 1, ChunkSize, ChunkSize + 1, 2*ChunkSize + 5} {
		data := make([]byte, size)
		rand.Read(data)
		d := NewDigester()
		d.Write(data)
		wantSum, wantChunks := d.Sum()
		if wantSum != sha256.Sum256(data) {
			t.Fatal("Digester disagrees with sha256")
		}

		r := &readSizes{t: t, r: bytes.NewReader(data)}
		sum, chunks, n, err := Digest(r)
		if err != nil || n != int64(size) || sum != wantSum || !reflect.DeepEqual(chunks, wantChunks) {
			t.Errorf("Digest of %d bytes: %d bytes, %d chunk digests (want %d), sum ok %v, %v",
				size, n, len(chunks), len(wantChunks), sum == wantSum, err)
		}
		for _, s := range r.sizes {
			if s != 256<<10 {
				t.Fatalf("Digest read %d bytes at a time, want 256 KiB", s)
			}
		}

		sum, n, err = Sum(&readSizes{t: t, r: bytes.NewReader(data)})
		if err != nil || n != int64(size) || sum != wantSum {
			t.Errorf("Sum of %d bytes: %d bytes, %v", size, n, err)
		}

		var out bytes.Buffer // has ReadFrom: must not be used either
		sum, n, err = CopySum(&out, &readSizes{t: t, r: bytes.NewReader(data)})
		if err != nil || n != int64(size) || sum != wantSum || !bytes.Equal(out.Bytes(), data) {
			t.Errorf("CopySum of %d bytes: %d bytes, %d copied, %v", size, n, out.Len(), err)
		}
	}
}

type brokenReader struct{ n int }

var errRead = errors.New("read failed")

func (r *brokenReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errRead
	}
	k := min(len(p), r.n)
	r.n -= k
	return k, nil
}

// shortWriter takes fewer bytes than it is given, without an error.
type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

func TestDigestErrors(t *testing.T) {
	if _, _, n, err := Digest(&brokenReader{n: 1000}); !errors.Is(err, errRead) || n != 1000 {
		t.Errorf("Digest of a failing reader: %d bytes, %v", n, err)
	}
	if _, n, err := Sum(&brokenReader{n: 10}); !errors.Is(err, errRead) || n != 10 {
		t.Errorf("Sum of a failing reader: %d bytes, %v", n, err)
	}
	if _, n, err := CopySum(shortWriter{}, bytes.NewReader(make([]byte, 100))); !errors.Is(err, io.ErrShortWrite) || n != 50 {
		t.Errorf("CopySum into a short writer: %d bytes, %v", n, err)
	}
}
