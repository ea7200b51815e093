// Snapshot format, versions 1 to 5
//
// An index snapshot is stored in the store under SnapshotKey. All integers
// in the header are little-endian:
//
//	offset  size  field
//	0       8     magic "SSTFSIDX"
//	8       4     format version, uint32 = 5 (1 to 4 are still read)
//	12      4     flags, uint32 (see below)
//	16      8     created: int64 unix nanoseconds (math.MinInt64 = unknown)
//	24      8     object count N, uint64
//	32      8     covered segment count C, uint64
//	40      8     equivalence count E, uint64
//	48      8     chunk digest count D, uint64
//	56      8     sign-off count F, uint64
//	64      8     body length B in bytes, uint64
//	72      B     body: one zstd stream (frames with a window of at most 8 MiB)
//	72+B    32    trailer: SHA-256 of bytes [0, 72+B)
//
// Version 4 has no sign-off count: B follows D at offset 56, and the body
// starts at 64. Version 3 has no chunk digest count either: B follows E at offset 48, and the
// body starts at 56. Version 2 has no equivalence count either: B follows
// C at offset 40, and the body starts at 48. Version 1 has no flags and no
// covered count either: created, N and B follow the version at offsets 12,
// 20 and 28, and the body starts at 36. Encode writes the lowest version
// that holds the index: 5 if it has sign-offs, else 4 if an object has
// chunk digests, else 3 if there are equivalences, else 2; older readers
// then still read what they can represent.
//
// Flag bit 0, complete: the snapshot descends from a listing of the whole
// store (`sstatefs index build`), so a key it lacks was absent when it was
// made, not merely unknown to the journal. Version 1 snapshots are always
// complete. Other bits are reserved and rejected.
//
// Nothing follows the trailer. The body decompresses to exactly C covered
// segment names, then N entries, then (version 3 and later) the
// equivalence section (in version 4 and later also when E is 0: then S is
// 0), then (version 5) F sign-offs.
// A covered name is
//
//	uvarint  length (at most 105)
//	bytes    the segment's name under JournalPrefix
//	         ("<20 digits>-<writer>-<16 hex digits>.seg")
//
// strictly increasing: the journal segments whose records the snapshot
// includes, which readers therefore skip. The entries are sorted by key,
// strictly increasing (bytewise), each:
//
//	uvarint  shared: length of the prefix this key shares with the previous
//	         key (0 for the first entry)
//	uvarint  suffix length
//	bytes    suffix; key = previous key[:shared] + suffix
//	uvarint  size in bytes (at most math.MaxInt64)
//	varint   modification time, unix nanoseconds (math.MinInt64 = unknown)
//	32 bytes SHA-256 of the content (all zero = unknown)
//	uvarint  last access, unix seconds, at most 2^32-1 (0 = none; version 2 on)
//	uvarint  K, the number of chunk digests (version 4 on): 0, or for an
//	         object larger than ChunkSize (1 MiB), ceil(size / ChunkSize)
//	K times  32 bytes SHA-256 of the object's bytes [k*ChunkSize,
//	         min((k+1)*ChunkSize, size)), in order
//
// The K of all entries add up to D. Version 1 has no covered names and no
// access times. Keys are valid store
// keys (backend.CheckKey) of at most MaxKeyLen bytes, never under
// backend.MetaPrefix.
//
// The equivalence section is a string table, then E records. The table is
//
//	uvarint  S, the number of strings (at most 6E)
//	S times  uvarint length (1 to 4096), bytes
//
// strictly increasing (bytewise), at most 64 MiB in all; string id k >= 1
// is the k-th, id 0 the empty string. A record is
//
//	byte     flags: bit 0 in force (the first record of its method and
//	         taskhash), bit 1 the first record of its method and outhash,
//	         bit 2 the unihash is the taskhash; others reserved; bit 0 or
//	         bit 1 is set
//	uvarint  method id
//	hash     taskhash
//	hash     outhash (0 digits: none; not with bit 1)
//	hash     unihash (absent with bit 2)
//	varint   created, unix nanoseconds (math.MinInt64 = unknown)
//	uvarint  ids of PN, PV, PR, task and owner
//
// where a hash is a uvarint count of hex digits (at most 255) and the
// digits packed two a byte, high nibble first, an odd count leaving the
// last low nibble 0. Records are strictly increasing by taskhash (as hex
// strings), method, the record in force first, then outhash; each method
// and taskhash has at most one record in force, each method and outhash at
// most one first record, and a record that is only the first of its
// outhash follows the record in force of its method and taskhash. A
// well-formed record that breaks Equivalence.Validate is dropped (and
// counted in Sources.Invalid), not the snapshot; a writer that relaxes
// those rules must use a new version.
//
// A sign-off is encoded as in a journal segment's Signed record (see
// segment.go and signoff.go: key, SHA-256, fingerprint, created,
// signature), strictly increasing by key, digest and fingerprint. Encode
// keeps only the sign-offs that count (Index.Signoffs: the object is in
// the index, with the digest signed), so compaction drops those of objects
// gone or replaced. A well-formed sign-off that breaks Signoff.Validate is
// dropped (and counted in Sources.Invalid).
//
// Readers reject N above 2^28, C above 2^20, E above 2^24, D above 2^26,
// F above 2^24 and a body length B no N entries, C names, E records, D
// digests and F sign-offs could need, before reading further.
//
// The body length in the header lets a reader tell a truncated snapshot
// from a corrupt one, and the checksum is verified before anything is
// decompressed, so damage is reported as such rather than as a zstd error.
//
// The key stays snapshot.v1 for every version: an older sstatefs must find
// a newer snapshot and reject it with a clear error (and fall back to
// probing the store) rather than keep reading a stale snapshot of its own
// version. Readers reject versions they do not know.
//
// Journal segments (segment.go) use the same frame: magic, version,
// header fields, zstd body, SHA-256 trailer.

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
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// SnapshotKey is where a store keeps its index snapshot (of any version,
// see the format description).
const SnapshotKey = ".sstatefs/index/snapshot.v1"

// ErrNoIndex: the store has no index snapshot and no journal segments. The
// mount then probes the store for every name.
var ErrNoIndex = errors.New("store has no index")

// ErrCorrupt: a snapshot or journal segment is not a valid encoding; the
// error says what is wrong. Rebuilding the index replaces a snapshot; a
// corrupt segment is skipped by readers.
var ErrCorrupt = errors.New("corrupt index")

const (
	magic         = "SSTFSIDX"
	formatVersion = 5
	prefixLen     = 12 // magic and version: the part of a header every version shares
	headerLenV1   = 36
	headerLenV2   = 48
	headerLenV3   = 56
	headerLenV4   = 64
	headerLenV5   = 72
	flagComplete  = 1 << 0
	trailerLen    = sha256.Size

	// maxObjects bounds the object count a snapshot may declare: 256 times
	// the largest store sstatefs is designed for.
	maxObjects = 1 << 28
	// maxCovered bounds the covered segments a snapshot may declare.
	// Compaction deletes covered segments, so a few thousand is a lot.
	maxCovered = 1 << 20
	// maxEntryLen is the longest encoded entry: five varints of at most
	// 10 bytes, the key and the digest.
	maxEntryLen = 5*binary.MaxVarintLen64 + MaxKeyLen + sha256.Size
	// maxChunkDigests bounds the chunk digests a snapshot may declare:
	// 512 TiB of objects larger than ChunkSize.
	maxChunkDigests = 1 << 26
	// maxEquivalences bounds the equivalence records a snapshot may
	// declare: far more than any hash equivalence server holds.
	maxEquivalences = 1 << 24
	// maxEqRecordLen is the longest encoded equivalence record.
	maxEqRecordLen = 1 + 7*binary.MaxVarintLen64 + 3*(binary.MaxVarintLen64+(maxFormatHash+1)/2)
	// maxStringTable bounds the bytes of a snapshot's string table.
	maxStringTable = 64 << 20
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

// Encode writes ix to w in the snapshot format: its objects from both
// runs, their access times and chunk digests, the segments it covers, its
// equivalence records and the sign-offs that count, in the lowest version
// that holds them all.
func Encode(w io.Writer, ix *Index) error {
	if ix == nil {
		return errors.New("encode index: nil index")
	}
	if n := ix.numEqEntries(); n > maxEquivalences {
		return fmt.Errorf("encode index: %d equivalence records (limit %d)", n, maxEquivalences)
	}
	digests := ix.numChunkDigests()
	if digests > maxChunkDigests {
		return fmt.Errorf("encode index: %d chunk digests (limit %d)", digests, maxChunkDigests)
	}
	sigs := ix.countingSignoffs()
	if len(sigs) > maxSignoffs {
		return fmt.Errorf("encode index: %d sign-offs (limit %d)", len(sigs), maxSignoffs)
	}
	version, hl := uint32(2), headerLenV2
	switch {
	case len(sigs) > 0:
		version, hl = 5, headerLenV5
	case digests > 0:
		version, hl = 4, headerLenV4
	case ix.numEqEntries() > 0:
		version, hl = 3, headerLenV3
	}
	body, err := encodeBody(ix, version, sigs)
	if err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	var flags uint32
	if ix.complete {
		flags |= flagComplete
	}
	hdr := make([]byte, hl)
	copy(hdr, magic)
	binary.LittleEndian.PutUint32(hdr[8:], version)
	binary.LittleEndian.PutUint32(hdr[12:], flags)
	binary.LittleEndian.PutUint64(hdr[16:], uint64(ix.created))
	binary.LittleEndian.PutUint64(hdr[24:], uint64(ix.Len()))
	binary.LittleEndian.PutUint64(hdr[32:], uint64(len(ix.covered)))
	if version >= 3 {
		binary.LittleEndian.PutUint64(hdr[40:], uint64(ix.numEqEntries()))
	}
	if version >= 4 {
		binary.LittleEndian.PutUint64(hdr[48:], uint64(digests))
	}
	if version >= 5 {
		binary.LittleEndian.PutUint64(hdr[56:], uint64(len(sigs)))
	}
	binary.LittleEndian.PutUint64(hdr[hl-8:], uint64(len(body)))
	if err := writeFrame(w, hdr, body); err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	return nil
}

// newZstdWriter returns the compressor of snapshots and segments. The
// fastest level compresses as well as the default here (what is left after
// prefix compression is mostly hash digits and digests) and needs a third
// of the memory; one goroutine is plenty for one stream.
func newZstdWriter(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithWindowSize(encoderWindow), zstd.WithEncoderConcurrency(1))
}

// numChunkDigests is the number of chunk digests of both runs.
func (ix *Index) numChunkDigests() int { return len(ix.base.ck.sums) + len(ix.extra.ck.sums) }

// encodeBody returns the zstd-compressed covered names, entries and
// equivalence section and sign-offs sigs of a snapshot of version (2 to
// 5).
func encodeBody(ix *Index, version uint32, sigs []Signoff) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := newZstdWriter(&buf)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(zw, 64<<10)
	var scratch []byte
	for _, key := range ix.covered {
		name := strings.TrimPrefix(key, JournalPrefix)
		scratch = binary.AppendUvarint(scratch[:0], uint64(len(name)))
		scratch = append(scratch, name...)
		bw.Write(scratch) // a bufio.Writer keeps its first error for Flush
	}
	var prev, key []byte
	ix.each(func(r *run, i int) bool {
		key = r.appendKey(key[:0], i)
		size, mtime, sha := r.meta(i)
		shared := commonPrefixLen(prev, key)
		scratch = binary.AppendUvarint(scratch[:0], uint64(shared))
		scratch = binary.AppendUvarint(scratch, uint64(len(key)-shared))
		scratch = append(scratch, key[shared:]...)
		scratch = binary.AppendUvarint(scratch, uint64(size))
		scratch = binary.AppendVarint(scratch, mtime)
		scratch = append(scratch, sha[:]...)
		scratch = binary.AppendUvarint(scratch, uint64(r.atime(i)))
		if version >= 4 {
			chunks := r.chunks(i)
			scratch = binary.AppendUvarint(scratch, uint64(len(chunks)))
			for k := range chunks {
				scratch = append(scratch, chunks[k][:]...)
			}
		}
		bw.Write(scratch)
		prev, key = key, prev
		return true
	})
	if version >= 3 {
		encodeEquivalences(bw, ix)
	}
	for i := range sigs {
		scratch = appendSignoff(scratch[:0], &sigs[i])
		bw.Write(scratch)
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

// encodeEquivalences writes the string table and the equivalence records
// of both runs, merged in order.
func encodeEquivalences(bw *bufio.Writer, ix *Index) {
	used := map[string]uint64{}
	for _, r := range ix.runs() {
		for i := range r.es {
			e := &r.es[i]
			for _, id := range [...]uint32{e.method, e.pn, e.pv, e.pr, e.task, e.owner} {
				if id != 0 {
					used[r.strs[id]] = 0
				}
			}
		}
	}
	strs := make([]string, 0, len(used))
	for s := range used {
		strs = append(strs, s)
	}
	slices.Sort(strs)
	scratch := binary.AppendUvarint(nil, uint64(len(strs)))
	bw.Write(scratch)
	for i, s := range strs {
		used[s] = uint64(i + 1)
		scratch = binary.AppendUvarint(scratch[:0], uint64(len(s)))
		bw.Write(scratch)
		bw.WriteString(s)
	}
	id := func(r *eqRun, k uint32) uint64 {
		if k == 0 {
			return 0
		}
		return used[r.strs[k]]
	}
	hash := func(b []byte, digits uint8, packed []byte) []byte {
		return append(binary.AppendUvarint(b, uint64(digits)), packed...)
	}
	ix.eachEq(func(r *eqRun, e *eqEntry) bool {
		scratch = append(scratch[:0], e.flags)
		scratch = binary.AppendUvarint(scratch, id(r, e.method))
		scratch = hash(scratch, e.tn, r.taskhash(e))
		scratch = hash(scratch, e.on, r.outhash(e))
		if e.flags&eqSameUnihash == 0 {
			scratch = hash(scratch, e.un, r.unihash(e))
		}
		scratch = binary.AppendVarint(scratch, e.created)
		for _, k := range [...]uint32{e.pn, e.pv, e.pr, e.task, e.owner} {
			scratch = binary.AppendUvarint(scratch, id(r, k))
		}
		bw.Write(scratch)
		return true
	})
}

func commonPrefixLen(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// writeFrame writes a header, the body and the SHA-256 trailer of both.
func writeFrame(w io.Writer, hdr, body []byte) error {
	h := sha256.New()
	h.Write(hdr)
	h.Write(body)
	for _, b := range [][]byte{hdr, body, h.Sum(nil)} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// frameSpec describes one framed format: snapshots or journal segments.
type frameSpec struct {
	magic, what string // what: the format's name, in "not an sstatefs <what>"
	minHeader   int    // the shortest header of any version
	// header returns the header length of a version, 0 if unsupported.
	header func(version uint32) int
	latest uint32
	// bodyLimit checks the header's counts and returns the longest body
	// they allow.
	bodyLimit func(hdr []byte) (uint64, error)
	bodyLen   func(hdr []byte) uint64
}

// readFrame reads a frame: header, body and trailer, and verifies the
// checksum. It never trusts a length before checking it against the
// format's limits, and allocates in proportion to the data it actually
// reads. Damage is reported as an error wrapping ErrCorrupt; a failure of r
// is returned as it is.
func readFrame(r io.Reader, spec *frameSpec) (hdr []byte, body io.Reader, err error) {
	hdr = make([]byte, prefixLen, headerLenV5) // the longest header
	if n, err := fill(r, hdr); err == io.EOF {
		return nil, nil, corrupt("truncated: %d bytes, shorter than the %d-byte header", n, spec.minHeader)
	} else if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", spec.what, err)
	}
	if string(hdr[:8]) != spec.magic {
		return nil, nil, corrupt("bad magic %q, want %q (not an sstatefs %s)", hdr[:8], spec.magic, spec.what)
	}
	v := binary.LittleEndian.Uint32(hdr[8:])
	hl := spec.header(v)
	if hl == 0 {
		return nil, nil, corrupt("unsupported version %d (this sstatefs reads versions up to %d)", v, spec.latest)
	}
	hdr = hdr[:hl]
	if n, err := fill(r, hdr[prefixLen:]); err == io.EOF {
		return nil, nil, corrupt("truncated: %d bytes, shorter than the %d-byte header", prefixLen+n, hl)
	} else if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", spec.what, err)
	}
	limit, err := spec.bodyLimit(hdr)
	if err != nil {
		return nil, nil, err
	}
	bodyLen := spec.bodyLen(hdr)
	if bodyLen > limit {
		return nil, nil, corrupt("absurd body length %d (limit %d)", bodyLen, limit)
	}

	want := int64(bodyLen) + trailerLen
	blocks, n, err := readBlocks(r, want+1)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", spec.what, err)
	}
	switch {
	case n < want:
		return nil, nil, corrupt("truncated: %d bytes after the header, want %d (body %d, checksum %d)",
			n, want, bodyLen, trailerLen)
	case n > want:
		return nil, nil, corrupt("trailing data after the checksum")
	}
	h := sha256.New()
	h.Write(hdr)
	rest := blocksReader(blocks)
	var trailer [trailerLen]byte
	if _, err := io.CopyN(h, rest, int64(bodyLen)); err != nil {
		return nil, nil, err // cannot happen: the blocks hold n bytes
	}
	if _, err := io.ReadFull(rest, trailer[:]); err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(h.Sum(nil), trailer[:]) {
		return nil, nil, corrupt("checksum mismatch (the %s is damaged)", spec.what)
	}
	return hdr, io.LimitReader(blocksReader(blocks), int64(bodyLen)), nil
}

var snapshotSpec = frameSpec{
	magic: magic, what: "index", minHeader: headerLenV1, latest: formatVersion,
	header: func(v uint32) int {
		switch v {
		case 1:
			return headerLenV1
		case 2:
			return headerLenV2
		case 3:
			return headerLenV3
		case 4:
			return headerLenV4
		case 5:
			return headerLenV5
		}
		return 0
	},
	bodyLimit: func(hdr []byte) (uint64, error) {
		h := parseSnapshotHeader(hdr)
		if h.flags&^flagComplete != 0 {
			return 0, corrupt("unknown flags %#x", h.flags)
		}
		count, covered := h.count, h.covered
		if count > maxObjects {
			return 0, corrupt("absurd object count %d (limit %d)", count, maxObjects)
		}
		if covered > maxCovered {
			return 0, corrupt("absurd covered segment count %d (limit %d)", covered, maxCovered)
		}
		eqs := h.equivalences
		if eqs > maxEquivalences {
			return 0, corrupt("absurd equivalence count %d (limit %d)", eqs, maxEquivalences)
		}
		var eqLimit uint64
		if eqs > 0 {
			eqLimit = eqs*(maxEqRecordLen+1) + maxStringTable + 6*eqs*binary.MaxVarintLen64
		}
		digests := h.digests
		if digests > maxChunkDigests {
			return 0, corrupt("absurd chunk digest count %d (limit %d)", digests, maxChunkDigests)
		}
		var chunkLimit uint64
		if h.version >= 4 {
			chunkLimit = count*binary.MaxVarintLen64 + digests*sha256.Size
		}
		if h.signoffs > maxSignoffs {
			return 0, corrupt("absurd sign-off count %d (limit %d)", h.signoffs, maxSignoffs)
		}
		sigLimit := h.signoffs * maxSignoffLen
		// A zstd stream is never much longer than its content.
		return count*(maxEntryLen+1) + covered*(maxSegmentNameLen+binary.MaxVarintLen64+1) + eqLimit + chunkLimit + sigLimit + 4096, nil
	},
	bodyLen: func(hdr []byte) uint64 { return binary.LittleEndian.Uint64(hdr[len(hdr)-8:]) },
}

// Decode reads a snapshot written by Encode, of version 1 to 5. Damage
// is reported as an error wrapping ErrCorrupt that says what is wrong; a
// failure of r is returned as it is. Well-formed equivalence and sign-off
// records that break Validate are dropped and counted (Sources.Invalid). It
// never trusts a length before checking it against the format's limits,
// and allocates in proportion to the data it actually reads.
func Decode(r io.Reader) (*Index, error) {
	hdr, body, err := readFrame(r, &snapshotSpec)
	if err != nil {
		return nil, err
	}
	h := parseSnapshotHeader(hdr)
	ix, err := h.decode(body)
	if err != nil {
		return nil, err
	}
	ix.created = h.created
	ix.snapshot = true
	ix.complete = h.version == 1 || h.flags&flagComplete != 0
	return ix, nil
}

// snapshotHeader holds the fields of a snapshot header of any version.
type snapshotHeader struct {
	version                 uint32
	flags                   uint32
	created                 int64
	count, covered, bodyLen uint64
	equivalences            uint64
	digests                 uint64 // chunk digests (version 4 on)
	signoffs                uint64 // sign-offs (version 5)
}

// parseSnapshotHeader reads a header whose length readFrame has checked.
func parseSnapshotHeader(hdr []byte) snapshotHeader {
	le := binary.LittleEndian
	h := snapshotHeader{version: le.Uint32(hdr[8:])}
	if h.version == 1 {
		h.created, h.count, h.bodyLen = int64(le.Uint64(hdr[12:])), le.Uint64(hdr[20:]), le.Uint64(hdr[28:])
		return h
	}
	h.flags = le.Uint32(hdr[12:])
	h.created, h.count, h.covered = int64(le.Uint64(hdr[16:])), le.Uint64(hdr[24:]), le.Uint64(hdr[32:])
	if h.version >= 3 {
		h.equivalences = le.Uint64(hdr[40:])
	}
	if h.version >= 4 {
		h.digests = le.Uint64(hdr[48:])
	}
	if h.version >= 5 {
		h.signoffs = le.Uint64(hdr[56:])
	}
	h.bodyLen = le.Uint64(hdr[len(hdr)-8:])
	return h
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

// newBodyReader decompresses a verified body.
func newBodyReader(body io.Reader) (*zstd.Decoder, *bufio.Reader, error) {
	zr, err := zstd.NewReader(body,
		zstd.WithDecoderMaxWindow(decoderWindow), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, nil, fmt.Errorf("decode index: %w", err)
	}
	return zr, bufio.NewReaderSize(zstdReader{zr}, 64<<10), nil
}

// bodyError turns a read error in a body into an error wrapping
// ErrCorrupt: "<where>: truncated body in <what>" and the like.
func bodyError(where, what string, err error) error {
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return corrupt("%s: truncated body in %s", where, what)
	case errors.As(err, new(decompressError)):
		return corrupt("%s: %v", where, err)
	}
	return corrupt("%s: bad %s: %v", where, what, err)
}

// checkBodyEnd reports data left after the last record.
func checkBodyEnd(br *bufio.Reader, count uint64, what, whats string) error {
	switch _, err := br.ReadByte(); {
	case err == nil:
		return corrupt("%s count mismatch: header says %d %s, body has more", what, count, whats)
	case !errors.Is(err, io.EOF):
		return corrupt("after the last %s: %v", what, err)
	}
	return nil
}

// quoteKey quotes a key for an error message, cut to 200 bytes: a corrupt
// one may be 4 KiB of anything.
func quoteKey[T string | []byte](key T) string {
	if len(key) > 200 {
		return fmt.Sprintf("%q... (%d bytes)", key[:200], len(key))
	}
	return fmt.Sprintf("%q", key)
}

// decode decompresses and checks the covered names and count entries.
func (d *snapshotHeader) decode(body io.Reader) (*Index, error) {
	zr, br, err := newBodyReader(body)
	if err != nil {
		return nil, err
	}
	defer zr.Close()

	covered, err := decodeCovered(br, d.covered)
	if err != nil {
		return nil, err
	}

	// Trust the count for preallocation only as far as the body could
	// plausibly hold it; beyond that, grow with the data.
	capacity := min(d.count, d.bodyLen/16+1024)
	pk := newPacker(int(capacity))
	var (
		at    []uint32 // allocated at the first access time
		ck    chunkTable
		prev  = make([]byte, 0, 256)
		key   = make([]byte, 0, 256)
		total int64
		sha   [32]byte // outside the loop: passing it to a reader moves it to the heap
	)
	bad := func(i uint64, what string, err error) error {
		if errors.Is(err, io.EOF) && what == "shared prefix length" {
			return corrupt("entry count mismatch: header says %d entries, body ends after %d", d.count, i)
		}
		return bodyError(fmt.Sprintf("entry %d", i), what, err)
	}
	for i := uint64(0); i < d.count; i++ {
		shared, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, bad(i, "shared prefix length", err)
		}
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, bad(i, "suffix length", err)
		}
		if shared > uint64(len(prev)) {
			return nil, corrupt("entry %d: shared prefix length %d exceeds the previous key's %d bytes", i, shared, len(prev))
		}
		if n > MaxKeyLen || shared+n > MaxKeyLen {
			return nil, corrupt("entry %d: absurd key length %d+%d (limit %d)", i, shared, n, MaxKeyLen)
		}
		key = append(key[:0], prev[:shared]...)
		key = slices.Grow(key, int(n))[:shared+n]
		if _, err := io.ReadFull(br, key[shared:]); err != nil {
			return nil, bad(i, "key", err)
		}
		size, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, bad(i, "size", err)
		}
		mtime, err := binary.ReadVarint(br)
		if err != nil {
			return nil, bad(i, "modification time", err)
		}
		if _, err := io.ReadFull(br, sha[:]); err != nil {
			return nil, bad(i, "sha256", err)
		}
		var atime uint64
		if d.version >= 2 {
			if atime, err = binary.ReadUvarint(br); err != nil {
				return nil, bad(i, "access time", err)
			}
			if atime > math.MaxUint32 {
				return nil, corrupt("entry %d: absurd access time %d", i, atime)
			}
		}
		if size > math.MaxInt64 {
			return nil, corrupt("entry %d: absurd size %d", i, size)
		}
		if d.version >= 4 {
			k, err := binary.ReadUvarint(br)
			if err != nil {
				return nil, bad(i, "chunk digest count", err)
			}
			if k != 0 && k != uint64(NumChunks(int64(size))) {
				return nil, corrupt("entry %d: %d chunk digests for %d bytes, want 0 or %d", i, k, size, NumChunks(int64(size)))
			}
			if uint64(len(ck.sums))+k > d.digests {
				return nil, corrupt("chunk digest count mismatch: header says %d, entry %d goes beyond", d.digests, i)
			}
			if k > 0 {
				if ck.sums == nil {
					ck.sums = make([][32]byte, 0, min(d.digests, d.bodyLen/32+16))
				}
				n := len(ck.sums)
				ck.sums = slices.Grow(ck.sums, int(k))[:n+int(k)]
				for j := n; j < len(ck.sums); j++ {
					if _, err := io.ReadFull(br, ck.sums[j][:]); err != nil {
						return nil, bad(i, "chunk digest", err)
					}
				}
				ck.pos = append(ck.pos, uint32(i))
				ck.end = append(ck.end, uint32(len(ck.sums)))
			}
		}
		if total > math.MaxInt64-int64(size) {
			return nil, corrupt("entry %d: total size overflows", i)
		}
		total += int64(size)
		if i > 0 && string(key) <= string(prev) {
			return nil, corrupt("keys not strictly increasing: entry %d %s follows %s", i, quoteKey(key), quoteKey(prev))
		}
		if !validKey(key) {
			return nil, corrupt("entry %d: invalid key %s", i, quoteKey(key))
		}
		if atime != 0 && at == nil {
			at = make([]uint32, i, max(capacity, i+1))
		}
		pk.add(key, int64(size), mtime, &sha)
		if at != nil {
			at = append(at, uint32(atime))
		}
		prev, key = key, prev
	}
	if uint64(len(ck.sums)) != d.digests {
		return nil, corrupt("chunk digest count mismatch: header says %d, entries have %d", d.digests, len(ck.sums))
	}
	ck.finish()
	ix := &Index{total: total, covered: covered}
	if d.version >= 3 {
		if ix.eqBase, ix.invalid, err = decodeEquivalences(br, d.equivalences, d.bodyLen); err != nil {
			return nil, err
		}
		if d.version >= 5 {
			var invalid int
			if ix.sigBase, invalid, err = decodeSignoffs(br, d.signoffs, d.bodyLen); err != nil {
				return nil, err
			}
			ix.invalid += invalid
			if err := checkBodyEnd(br, d.signoffs, "sign-off", "sign-offs"); err != nil {
				return nil, err
			}
		} else if err := checkBodyEnd(br, d.equivalences, "equivalence", "equivalences"); err != nil {
			return nil, err
		}
	} else if err := checkBodyEnd(br, d.count, "entry", "entries"); err != nil {
		return nil, err
	}
	ix.base = run{pk: pk.finish(), at: clip(at), ck: ck}
	return ix, nil
}

// Per-string validity in a snapshot's string table.
const (
	strMethodOK = 1 << iota // a valid Method
	strFieldOK              // a valid PN, PV, PR, task or owner
)

// decodeEquivalences reads the string table and count equivalence records
// and returns them as a run, with the number of records dropped as
// invalid.
func decodeEquivalences(br *bufio.Reader, count, bodyLen uint64) (eqRun, int, error) {
	var r eqRun
	ns, err := binary.ReadUvarint(br)
	if err != nil {
		return r, 0, bodyError("equivalence strings", "count", err)
	}
	if ns > 6*count {
		return r, 0, corrupt("equivalence strings: absurd count %d for %d records", ns, count)
	}
	strs := make([]string, 1, min(ns, 4096)+1)
	var (
		arena keyArena
		total uint64
		buf   = make([]byte, 0, 256)
	)
	for i := uint64(1); i <= ns; i++ {
		where := fmt.Sprint("equivalence string ", i) // one a string, and strings are few
		l, err := binary.ReadUvarint(br)
		if err != nil {
			return r, 0, bodyError(where, "length", err)
		}
		if l == 0 || l > maxFormatString {
			return r, 0, corrupt("%s: bad length %d (1 to %d)", where, l, maxFormatString)
		}
		if total += l; total > maxStringTable {
			return r, 0, corrupt("%s: string table longer than %d bytes", where, maxStringTable)
		}
		buf = resize(buf, int(l))
		if _, err := io.ReadFull(br, buf); err != nil {
			return r, 0, bodyError(where, "string", err)
		}
		if i > 1 && string(buf) <= strs[i-1] {
			return r, 0, corrupt("equivalence strings not strictly increasing: %d %s follows %s", i, quoteKey(buf), quoteKey(strs[i-1]))
		}
		strs = append(strs, arena.add("", buf))
	}
	ok := make([]uint8, len(strs))
	ok[0] = strFieldOK
	for i, s := range strs[1:] {
		if validText(s, maxMethodLen) {
			ok[i+1] |= strMethodOK
		}
		if validText(s, maxFieldLen) {
			ok[i+1] |= strFieldOK
		}
	}

	r.strs = strs
	r.es = make([]eqEntry, 0, min(count, bodyLen/32+1024))
	r.hex = make([]byte, 0, min(count, bodyLen/32+1024)*64)
	var (
		prev     eqEntry
		invalid  int
		groupWon bool // the current (taskhash, method) has a record in force
		groupOK  bool // ... and it is valid
	)
	for i := uint64(0); i < count; i++ {
		where := func() string { return fmt.Sprintf("equivalence %d", i) }
		bad := func(what string, err error) error {
			if errors.Is(err, io.EOF) && what == "flags" {
				return corrupt("equivalence count mismatch: header says %d, body ends after %d", count, i)
			}
			return bodyError(where(), what, err)
		}
		flags, err := br.ReadByte()
		if err != nil {
			return r, 0, bad("flags", err)
		}
		if flags&^eqFlagsKnown != 0 {
			return r, 0, corrupt("%s: unknown flags %#x", where(), flags)
		}
		if flags&(eqWinner|eqFirstOut) == 0 {
			return r, 0, corrupt("%s: neither in force nor the first of its outhash", where())
		}
		readID := func(what string) (uint32, error) {
			id, err := binary.ReadUvarint(br)
			if err != nil {
				return 0, bad(what, err)
			}
			if id > ns {
				return 0, corrupt("%s: %s id %d beyond the %d strings", where(), what, id, ns)
			}
			return uint32(id), nil
		}
		if len(r.hex) > math.MaxUint32-3*(maxFormatHash+1)/2 {
			return r, 0, corrupt("%s: equivalence hashes beyond 4 GiB", where())
		}
		e := eqEntry{flags: flags, off: uint32(len(r.hex))}
		if e.method, err = readID("method"); err != nil {
			return r, 0, err
		}
		var n int
		if r.hex, n, err = readPacked(br, r.hex); err != nil {
			return r, 0, hashError(where(), "taskhash", err)
		}
		e.tn = uint8(n)
		if r.hex, n, err = readPacked(br, r.hex); err != nil {
			return r, 0, hashError(where(), "outhash", err)
		}
		e.on = uint8(n)
		e.un = e.tn
		if flags&eqSameUnihash == 0 {
			if r.hex, n, err = readPacked(br, r.hex); err != nil {
				return r, 0, hashError(where(), "unihash", err)
			}
			e.un = uint8(n)
		}
		if e.created, err = binary.ReadVarint(br); err != nil {
			return r, 0, bad("created", err)
		}
		var ids [5]uint32
		for k, what := range [...]string{"PN", "PV", "PR", "task", "owner"} {
			if ids[k], err = readID(what); err != nil {
				return r, 0, err
			}
		}
		e.pn, e.pv, e.pr, e.task, e.owner = ids[0], ids[1], ids[2], ids[3], ids[4]
		if flags&eqFirstOut != 0 && e.on == 0 {
			return r, 0, corrupt("%s: the first of its outhash without an outhash", where())
		}
		newGroup := true
		if i > 0 {
			if cmpEq(&r, &prev, &r, &e) >= 0 {
				return r, 0, corrupt("equivalences not strictly increasing: %d (taskhash %s) follows taskhash %s", i,
					unpack(r.taskhash(&e), int(e.tn)), unpack(r.taskhash(&prev), int(prev.tn)))
			}
			newGroup = r.cmpKey(&prev, r.taskhash(&e), int(e.tn), r.strs[e.method]) != 0
		}
		if newGroup {
			groupWon, groupOK = false, false
		}
		prev = e
		valid := validDigits(e.tn) && validDigits(e.un) && (e.on == 0 || validDigits(e.on)) &&
			ok[e.method]&strMethodOK != 0 && ok[e.pn]&ok[e.pv]&ok[e.pr]&ok[e.task]&ok[e.owner]&strFieldOK != 0
		if flags&eqWinner != 0 {
			if groupWon {
				return r, 0, corrupt("%s: a second record in force for taskhash %s", where(), unpack(r.taskhash(&e), int(e.tn)))
			}
			groupWon, groupOK = true, valid
		} else if !groupOK {
			valid = false // only the first of its outhash, but its taskhash has no valid record in force
		}
		if !valid {
			invalid++
			continue
		}
		r.es = append(r.es, e)
	}
	if cap(r.es)-len(r.es) > len(r.es)/64 {
		r.es = slices.Clip(slices.Clone(r.es))
	}
	if cap(r.hex)-len(r.hex) > len(r.hex)/64 {
		r.hex = slices.Clip(slices.Clone(r.hex))
	}
	r.index()
	for i := 1; i < len(r.byOut); i++ {
		if a, b := &r.es[r.byOut[i-1]], &r.es[r.byOut[i]]; r.cmpOut(a, b) == 0 {
			return r, 0, corrupt("two equivalences are the first of method %s and outhash %s",
				quoteKey(r.strs[a.method]), unpack(r.outhash(a), int(a.on)))
		}
	}
	return r, invalid, nil
}

func validDigits(n uint8) bool { return n >= minHashLen && n <= maxHashLen }

// decodeCovered reads n covered segment names.
func decodeCovered(br *bufio.Reader, n uint64) ([]string, error) {
	if n == 0 {
		return nil, nil
	}
	out := make([]string, 0, min(n, 1024))
	buf := make([]byte, 0, maxSegmentNameLen)
	for i := uint64(0); i < n; i++ {
		where := fmt.Sprintf("covered segment %d", i)
		l, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, bodyError(where, "name length", err)
		}
		if l > maxSegmentNameLen {
			return nil, corrupt("%s: absurd name length %d (limit %d)", where, l, maxSegmentNameLen)
		}
		buf = resize(buf, int(l))
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, bodyError(where, "name", err)
		}
		key := JournalPrefix + string(buf)
		if _, ok := parseSegmentKey(key); !ok {
			return nil, corrupt("%s: invalid name %s", where, quoteKey(buf))
		}
		if i > 0 && key <= out[len(out)-1] {
			return nil, corrupt("covered segments not strictly increasing: %d %s follows %s", i, quoteKey(buf), quoteKey(out[len(out)-1]))
		}
		out = append(out, key)
	}
	return out, nil
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
