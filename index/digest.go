package index

import (
	"crypto/sha256"
	"io"
	"sync"
)

// digestBufs are the buffers every reader is hashed through: 256 KiB reads,
// where io.Copy would read 32 KiB at a time (the size *os.File's WriteTo
// and most readers' default use), taken from a pool since hashing runs for
// every object published, pushed, indexed, exported or found in the cache.
var digestBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// Digest reads r to its end and returns what the index records of it: its
// SHA-256, its chunk digests (nil for ChunkSize bytes or fewer) and its
// length, in one pass.
func Digest(r io.Reader) (sum [32]byte, chunks [][32]byte, n int64, err error) {
	d := NewDigester()
	if n, err = pump(d, nil, r); err != nil {
		return sum, nil, n, err
	}
	sum, chunks = d.Sum()
	return sum, chunks, n, nil
}

// Sum reads r to its end and returns its SHA-256 and length. It is Digest
// without the chunk digests, which would hash every byte twice, for
// checking bytes against a known digest.
func Sum(r io.Reader) (sum [32]byte, n int64, err error) {
	return CopySum(nil, r)
}

// CopySum copies r to its end into w (nil: nowhere) and returns the SHA-256
// and length of what it copied. On a write error the bytes hashed may go
// beyond those written; the error says so.
func CopySum(w io.Writer, r io.Reader) (sum [32]byte, n int64, err error) {
	h := sha256.New()
	if n, err = pump(h, w, r); err != nil {
		return sum, n, err
	}
	h.Sum(sum[:0])
	return sum, n, nil
}

// pump reads r to its end through a pooled buffer into h and, if w is not
// nil, into w. h's Write never fails (a hash, a Digester). An explicit loop rather than io.CopyBuffer, which would hand
// the copy to r's WriteTo or w's ReadFrom and their own small buffers.
func pump(h, w io.Writer, r io.Reader) (int64, error) {
	bp := digestBufs.Get().(*[]byte)
	defer digestBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		k, rerr := r.Read(buf)
		if k > 0 {
			h.Write(buf[:k]) // never fails
			if w != nil {
				m, werr := w.Write(buf[:k])
				n += int64(m)
				if werr == nil && m < k {
					werr = io.ErrShortWrite
				}
				if werr != nil {
					return n, werr
				}
			} else {
				n += int64(k)
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}
