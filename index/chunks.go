package index

import (
	"crypto/sha256"
	"hash"
	"slices"
	"sort"
)

// ChunkSize is the size of the pieces whose digests the index records for
// objects larger than it (Object.Chunks), so that a reader can be served a
// piece as soon as that piece has verified, while the rest still
// downloads. It is also the threshold below which a reader waits for the
// whole object to verify: a piece is verified before any of its bytes is
// served, and an object of one piece is one piece. 1 MiB: the first byte
// of a large object waits for its first piece to arrive and be hashed (8
// MiB pieces made it 39 ms against the S3 client's 18 ms at 10 ms RTT), and
// the digests cost 32 bytes per MiB stored (about 32 B per object of a
// core-image-minimal-like store, against the index's 150 B target). The
// cache still fetches large objects in ranged reads of 8 MiB and verifies
// each piece as its bytes arrive. Part of the snapshot and segment formats:
// changing it needs new format versions.
const ChunkSize = 1 << 20

// maxObjectChunks bounds the chunk digests of one object in both formats:
// 2^20 chunks of 1 MiB are 1 TiB, far beyond any sstate object.
const maxObjectChunks = 1 << 20

// NumChunks is the number of chunk digests an object of size bytes carries
// when it has any: 0 up to ChunkSize, else one per ChunkSize bytes, the
// last piece possibly shorter.
func NumChunks(size int64) int {
	if size <= ChunkSize {
		return 0
	}
	n := (size-1)/ChunkSize + 1
	if n > maxObjectChunks {
		return 0 // no such object has chunk digests (see maxObjectChunks)
	}
	return int(n)
}

// validChunks reports whether chunks are chunk digests an object of size
// bytes can carry: none, or exactly NumChunks(size).
func validChunks(size int64, chunks [][32]byte) bool {
	return len(chunks) == 0 || len(chunks) == NumChunks(size)
}

// Digester computes in one pass over an object's bytes its SHA-256 and, for
// an object larger than ChunkSize, the SHA-256 of each chunk: what the
// index records (Object.SHA256, Object.Chunks). Write never fails.
type Digester struct {
	whole, chunk hash.Hash
	n            int64 // bytes written
	inChunk      int64 // bytes of the current chunk written to chunk
	chunks       [][32]byte
}

// NewDigester returns a Digester of an empty object.
func NewDigester() *Digester {
	return &Digester{whole: sha256.New(), chunk: sha256.New()}
}

func (d *Digester) Write(p []byte) (int, error) {
	n := len(p)
	d.whole.Write(p)
	d.n += int64(n)
	for len(p) > 0 {
		if d.inChunk == ChunkSize {
			d.chunks = append(d.chunks, [32]byte(d.chunk.Sum(nil)))
			d.chunk.Reset()
			d.inChunk = 0
		}
		k := min(int64(len(p)), ChunkSize-d.inChunk)
		d.chunk.Write(p[:k])
		d.inChunk += k
		p = p[k:]
	}
	return n, nil
}

// Size is the number of bytes written.
func (d *Digester) Size() int64 { return d.n }

// Sum returns the digest of the bytes written and their chunk digests (nil
// for ChunkSize bytes or fewer).
func (d *Digester) Sum() (sum [32]byte, chunks [][32]byte) {
	d.whole.Sum(sum[:0])
	if NumChunks(d.n) == 0 {
		return sum, nil
	}
	chunks = append(slices.Clone(d.chunks), [32]byte(d.chunk.Sum(nil)))
	return sum, chunks
}

// chunkTable holds the chunk digests of the few entries of a run that have
// them (objects larger than ChunkSize): 8 bytes an entry that has some and
// their digests, nothing for the others, which are most.
type chunkTable struct {
	pos  []uint32   // positions of the entries with chunk digests, increasing
	end  []uint32   // end of entry pos[k]'s digests in sums (start: end[k-1])
	sums [][32]byte // the digests, entry after entry
}

// add appends the digests of the entry at pos, which follows those added
// before; nothing if chunks is empty.
func (t *chunkTable) add(pos int, chunks [][32]byte) {
	if len(chunks) == 0 {
		return
	}
	t.sums = append(t.sums, chunks...)
	t.pos = append(t.pos, uint32(pos))
	t.end = append(t.end, uint32(len(t.sums)))
}

// get returns the digests of the entry at pos (nil if none), sharing the
// table's memory: callers must not change them.
func (t *chunkTable) get(pos int) [][32]byte {
	if len(t.pos) == 0 {
		return nil
	}
	k := sort.Search(len(t.pos), func(k int) bool { return t.pos[k] >= uint32(pos) })
	if k == len(t.pos) || t.pos[k] != uint32(pos) {
		return nil
	}
	start := uint32(0)
	if k > 0 {
		start = t.end[k-1]
	}
	return t.sums[start:t.end[k]:t.end[k]]
}

// finish drops unused capacity: the table lives as long as its run.
func (t *chunkTable) finish() {
	t.pos, t.end, t.sums = clip(t.pos), clip(t.end), clip(t.sums)
}
