// Snapshot format, version 1
//
// An index snapshot is stored in the store under SnapshotKey. All integers
// in the header are little-endian:
//
//	offset  size  field
//	0       8     magic "SSTFSIDX"
//	8       4     format version, uint32 = 1
//	12      8     created: int64 unix nanoseconds (math.MinInt64 = unknown)
//	20      8     object count N, uint64
//	28      8     body length B in bytes, uint64
//	36      B     body: one zstd stream (frames with a window of at most 8 MiB)
//	36+B    32    trailer: SHA-256 of bytes [0, 36+B)
//
// Nothing follows the trailer. The body decompresses to exactly N entries,
// sorted by key, strictly increasing (bytewise), each:
//
//	uvarint  shared: length of the prefix this key shares with the previous
//	         key (0 for the first entry)
//	uvarint  suffix length
//	bytes    suffix; key = previous key[:shared] + suffix
//	uvarint  size in bytes (at most math.MaxInt64)
//	varint   modification time, unix nanoseconds (math.MinInt64 = unknown)
//	32 bytes SHA-256 of the content (all zero = unknown)
//
// Keys are valid store keys (backend.CheckKey) of at most MaxKeyLen bytes,
// never under backend.MetaPrefix. Readers reject N above 2^28 and a body
// length B no N entries could need, before reading further.
//
// The body length in the header lets a reader tell a truncated snapshot
// from a corrupt one, and the checksum is verified before anything is
// decompressed, so damage is reported as such rather than as a zstd error.
// A future incompatible change bumps the version and the key
// (snapshot.v2); readers reject versions they do not know.

package index

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// SnapshotKey is where a store keeps its index snapshot.
const SnapshotKey = ".sstatefs/index/snapshot.v1"

// ErrNoIndex: the store has no index snapshot. The mount then probes the
// store for every name.
var ErrNoIndex = errors.New("store has no index")

// ErrCorrupt: a snapshot is not a valid encoding; the error says what is
// wrong. Rebuilding the index replaces it.
var ErrCorrupt = errors.New("corrupt index")

const (
	magic         = "SSTFSIDX"
	formatVersion = 1
	headerLen     = 36
	trailerLen    = sha256.Size

	// maxObjects bounds the object count a snapshot may declare: 256 times
	// the largest store sstatefs is designed for.
	maxObjects = 1 << 28
	// maxEntryLen is the longest encoded entry: four varints of at most
	// 10 bytes, the key and the digest.
	maxEntryLen = 4*binary.MaxVarintLen64 + MaxKeyLen + sha256.Size
	// encoderWindow is the zstd window Encode uses; decoderWindow is the
	// largest a reader accepts (format limit), which bounds its memory.
	encoderWindow = 4 << 20
	decoderWindow = 8 << 20
	// arenaChunk is the size of the blocks Decode packs keys into.
	arenaChunk = 64 << 10
)

// corrupt returns an error wrapping ErrCorrupt: "corrupt index: <reason>".
func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// Encode writes ix to w in the snapshot format.
func Encode(w io.Writer, ix *Index) error {
	if ix == nil {
		return errors.New("encode index: nil index")
	}
	body, err := encodeBody(ix.entries)
	if err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	if err := writeSnapshot(w, ix.created, uint64(len(ix.entries)), body); err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	return nil
}

// encodeBody returns the zstd-compressed entries.
func encodeBody(es []entry) ([]byte, error) {
	var buf bytes.Buffer
	// The fastest level compresses as well as the default here (what is
	// left after prefix compression is mostly hash digits and digests) and
	// needs a third of the memory; one goroutine is plenty for one stream.
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithWindowSize(encoderWindow), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(zw, 64<<10)
	var scratch []byte
	prev := ""
	for i := range es {
		e := &es[i]
		shared := commonPrefixLen(prev, e.key)
		scratch = binary.AppendUvarint(scratch[:0], uint64(shared))
		scratch = binary.AppendUvarint(scratch, uint64(len(e.key)-shared))
		scratch = append(scratch, e.key[shared:]...)
		scratch = binary.AppendUvarint(scratch, uint64(e.size))
		scratch = binary.AppendVarint(scratch, e.mtime)
		scratch = append(scratch, e.sha[:]...)
		if _, err := bw.Write(scratch); err != nil {
			zw.Close()
			return nil, err
		}
		prev = e.key
	}
	if err := bw.Flush(); err != nil {
		zw.Close()
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func commonPrefixLen(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// writeSnapshot frames an already compressed body: header, body, trailer.
func writeSnapshot(w io.Writer, created int64, count uint64, body []byte) error {
	var hdr [headerLen]byte
	copy(hdr[:8], magic)
	binary.LittleEndian.PutUint32(hdr[8:], formatVersion)
	binary.LittleEndian.PutUint64(hdr[12:], uint64(created))
	binary.LittleEndian.PutUint64(hdr[20:], count)
	binary.LittleEndian.PutUint64(hdr[28:], uint64(len(body)))
	h := sha256.New()
	h.Write(hdr[:])
	h.Write(body)
	for _, b := range [][]byte{hdr[:], body, h.Sum(nil)} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// Decode reads a snapshot written by Encode. Damage is reported as an
// error wrapping ErrCorrupt that says what is wrong; a failure of r is
// returned as it is. It never trusts a length before checking it against
// the format's limits, and allocates in proportion to the data it actually
// reads.
func Decode(r io.Reader) (*Index, error) {
	var hdr [headerLen]byte
	if n, err := fill(r, hdr[:]); err == io.EOF {
		return nil, corrupt("truncated: %d bytes, shorter than the %d-byte header", n, headerLen)
	} else if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	if string(hdr[:8]) != magic {
		return nil, corrupt("bad magic %q, want %q (not an sstatefs index)", hdr[:8], magic)
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != formatVersion {
		return nil, corrupt("unsupported version %d (this sstatefs reads version %d)", v, formatVersion)
	}
	created := int64(binary.LittleEndian.Uint64(hdr[12:]))
	count := binary.LittleEndian.Uint64(hdr[20:])
	bodyLen := binary.LittleEndian.Uint64(hdr[28:])
	if count > maxObjects {
		return nil, corrupt("absurd object count %d (limit %d)", count, maxObjects)
	}
	// A zstd stream is never much longer than its content.
	if limit := count*(maxEntryLen+1) + 4096; bodyLen > limit {
		return nil, corrupt("absurd body length %d for %d objects (limit %d)", bodyLen, count, limit)
	}

	want := int64(bodyLen) + trailerLen
	blocks, n, err := readBlocks(r, want+1)
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	switch {
	case n < want:
		return nil, corrupt("truncated: %d bytes after the header, want %d (body %d, checksum %d)",
			n, want, bodyLen, trailerLen)
	case n > want:
		return nil, corrupt("trailing data after the checksum")
	}
	h := sha256.New()
	h.Write(hdr[:])
	rest := blocksReader(blocks)
	var trailer [trailerLen]byte
	if _, err := io.CopyN(h, rest, int64(bodyLen)); err != nil {
		return nil, err // cannot happen: the blocks hold n bytes
	}
	if _, err := io.ReadFull(rest, trailer[:]); err != nil {
		return nil, err
	}
	if !bytes.Equal(h.Sum(nil), trailer[:]) {
		return nil, corrupt("checksum mismatch (the snapshot is damaged)")
	}
	es, total, err := decodeBody(io.LimitReader(blocksReader(blocks), int64(bodyLen)), bodyLen, count)
	if err != nil {
		return nil, err
	}
	return &Index{entries: es, total: total, created: created}, nil
}

// readBlocks reads up to limit bytes of r into blocks growing from 64 KiB
// to 4 MiB: memory follows the data actually read, never a length the
// header claims, and a large snapshot is not copied again and again as
// one growing buffer would be.
func readBlocks(r io.Reader, limit int64) ([][]byte, int64, error) {
	var (
		blocks [][]byte
		n      int64
		size   int64 = 64 << 10
	)
	for n < limit {
		b := make([]byte, min(size, limit-n))
		m, err := fill(r, b)
		if m > 0 {
			blocks = append(blocks, b[:m])
			n += int64(m)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, n, err
		}
		size = min(2*size, 4<<20)
	}
	return blocks, n, nil
}

// fill reads into b until it is full or r fails. Unlike io.ReadFull it
// returns io.EOF whenever r ended (after any number of bytes), so the end of
// the input is told apart from a reader's own errors, io.ErrUnexpectedEOF
// included.
func fill(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err == io.EOF && n == len(b) {
			break // r repeats io.EOF on the next call
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func blocksReader(blocks [][]byte) io.Reader {
	rs := make([]io.Reader, len(blocks))
	for i, b := range blocks {
		rs[i] = bytes.NewReader(b)
	}
	return io.MultiReader(rs...)
}

// decodeBody decompresses and checks count entries.
func decodeBody(body io.Reader, bodyLen, count uint64) ([]entry, int64, error) {
	zr, err := zstd.NewReader(body,
		zstd.WithDecoderMaxWindow(decoderWindow), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, 0, fmt.Errorf("decode index: %w", err)
	}
	defer zr.Close()
	br := bufio.NewReaderSize(zstdReader{zr}, 64<<10)

	// Trust the count for preallocation only as far as the body could
	// plausibly hold it; beyond that, grow with the data.
	es := make([]entry, 0, min(count, bodyLen/16+1024))
	var (
		keys   keyArena
		prev   string
		total  int64
		suffix = make([]byte, 0, 256)
		sha    [32]byte // outside the loop: passing it to a reader moves it to the heap
	)
	bad := func(i uint64, what string, err error) error {
		switch {
		case errors.Is(err, io.EOF) && what == "shared prefix length":
			return corrupt("entry count mismatch: header says %d entries, body ends after %d", count, i)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return corrupt("entry %d: truncated body in %s", i, what)
		case errors.As(err, new(decompressError)):
			return corrupt("entry %d: %v", i, err)
		}
		return corrupt("entry %d: bad %s: %v", i, what, err)
	}
	for i := uint64(0); i < count; i++ {
		shared, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, 0, bad(i, "shared prefix length", err)
		}
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, 0, bad(i, "suffix length", err)
		}
		if shared > uint64(len(prev)) {
			return nil, 0, corrupt("entry %d: shared prefix length %d exceeds the previous key's %d bytes", i, shared, len(prev))
		}
		if n > MaxKeyLen || shared+n > MaxKeyLen {
			return nil, 0, corrupt("entry %d: absurd key length %d+%d (limit %d)", i, shared, n, MaxKeyLen)
		}
		suffix = resize(suffix, int(n))
		if _, err := io.ReadFull(br, suffix); err != nil {
			return nil, 0, bad(i, "key", err)
		}
		size, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, 0, bad(i, "size", err)
		}
		mtime, err := binary.ReadVarint(br)
		if err != nil {
			return nil, 0, bad(i, "modification time", err)
		}
		if _, err := io.ReadFull(br, sha[:]); err != nil {
			return nil, 0, bad(i, "sha256", err)
		}
		e := entry{size: int64(size), mtime: mtime, sha: sha}
		if size > math.MaxInt64 {
			return nil, 0, corrupt("entry %d: absurd size %d", i, size)
		}
		if total > math.MaxInt64-e.size {
			return nil, 0, corrupt("entry %d: total size overflows", i)
		}
		total += e.size
		e.key = keys.add(prev[:shared], suffix)
		if i > 0 && e.key <= prev {
			return nil, 0, corrupt("keys not strictly increasing: entry %d %q follows %q", i, e.key, prev)
		}
		if !validKey(e.key) {
			return nil, 0, corrupt("entry %d: invalid key %q", i, e.key)
		}
		es = append(es, e)
		prev = e.key
	}
	switch _, err := br.ReadByte(); {
	case err == nil:
		return nil, 0, corrupt("entry count mismatch: header says %d entries, body has more", count)
	case !errors.Is(err, io.EOF):
		return nil, 0, corrupt("after the last entry: %v", err)
	}
	return clipEntries(es), total, nil
}

// zstdReader marks the decompressor's own errors, so that they can be told
// from the entry parser's.
type zstdReader struct{ r io.Reader }

type decompressError struct{ err error }

func (e decompressError) Error() string { return "decompress body: " + e.err.Error() }
func (e decompressError) Unwrap() error { return e.err }

func (z zstdReader) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		err = decompressError{err}
	}
	return n, err
}

// resize returns b resized to n bytes, reusing its array when it can.
func resize(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// clipEntries drops unused capacity of a large slice, which would otherwise
// stay allocated for the snapshot's lifetime.
func clipEntries(es []entry) []entry {
	if cap(es)-len(es) <= len(es)/64 {
		return es
	}
	out := make([]entry, len(es))
	copy(out, es)
	return out
}

// keyArena packs keys into large blocks: one allocation per 64 KiB of keys
// instead of one per key, and no per-key allocation-size rounding. A
// strings.Builder never changes bytes it has handed out, so keys taken from
// it stay valid when it moves on to a new block.
type keyArena struct {
	b strings.Builder
}

func (a *keyArena) add(prefix string, suffix []byte) string {
	n := len(prefix) + len(suffix)
	if a.b.Cap()-a.b.Len() < n {
		a.b.Reset()
		a.b.Grow(max(n, arenaChunk))
	}
	a.b.WriteString(prefix)
	a.b.Write(suffix)
	s := a.b.String()
	return s[len(s)-n:]
}
