// Journal segment format, versions 1 to 4
//
// Every mount that writes keeps a journal of what it published and what
// bitbake used, as immutable segments in the store, each under its own key
//
//	.sstatefs/index/journal/<unix ns, 20 digits>-<writer>-<16 hex digits>.seg
//
// written with a conditional create (never replaced). The fixed-width time
// makes key order time order; the writer id ([a-z0-9-], at most 63
// characters) names the mount; the random digits keep two segments of one
// writer apart. A segment is framed like a snapshot (little-endian):
//
//	offset  size  field
//	0       8     magic "SSTFSJNL"
//	8       4     format version, uint32 = 4 (1, 2 and 3 are still read
//	              and written)
//	12      8     written: int64 unix nanoseconds, as in the key
//	20      8     record count N, uint64 (at most 2^20)
//	28      8     body length B in bytes, uint64
//	36      B     body: one zstd stream
//	36+B    32    trailer: SHA-256 of bytes [0, 36+B)
//
// The body decompresses to at most 64 MiB: exactly N records, each a kind
// byte and its fields:
//
//	1 Added:    uvarint key length, key, uvarint size, varint modification
//	            time (unix ns, math.MinInt64 = unknown), 32 bytes SHA-256,
//	            uvarint last access (unix seconds, 0 = none)
//	2 Accessed: uvarint key length, key, uvarint access time (unix seconds,
//	            not 0)
//	3 Reported: string method, hash taskhash, hash outhash (0 digits:
//	            none), hash unihash, varint created (unix ns,
//	            math.MinInt64 = unknown), string PN, PV, PR, task, owner
//	            (version 2 on)
//	4 Chunked:  an Added record followed by uvarint K and K times 32 bytes,
//	            the SHA-256 of each ChunkSize (1 MiB) piece of the object in
//	            order: K = ceil(size / ChunkSize) > 1 (version 3 on)
//	5 Signed:   a sign-off (signoff.go): uvarint key length, key, 32 bytes
//	            SHA-256 of the bytes signed, a byte L and the L bytes of
//	            the signing key's fingerprint (at most 32), varint created
//	            (unix ns, math.MinInt64 = unknown), uvarint signature
//	            length (at most 16 KiB), the binary OpenPGP detached
//	            signature (version 4 only)
//
// where a string is a uvarint length (at most 4096) and the bytes, and a
// hash is a uvarint count of hex digits (at most 255) and the digits
// packed two a byte, high nibble first (an odd count leaves the last low
// nibble 0). Version 2 is version 1 with Reported records, version 3
// version 2 with Chunked records, version 4 version 3 with Signed
// records; a writer uses the lowest version that holds its records, which
// older readers then still read. An object without chunk digests is an
// Added record in every version.
//
// Keys are valid object keys (see validKey). A Reported record that breaks
// Equivalence.Validate, or a Signed record that breaks Signoff.Validate,
// but is well formed is dropped by readers (and counted in
// Segment.Invalid), not the whole segment; a writer that relaxes those
// rules must therefore use a new version. Readers apply the
// segments a snapshot does not cover in key order; of two Added records
// for one key the first wins (the store keeps the first writer's object),
// and an object's access time is the latest recorded. Equivalences follow
// the rules of merge.go, and so do sign-offs (the first record of a key,
// digest and fingerprint is kept).

package index

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/klauspost/compress/zstd"
)

// JournalPrefix is the store prefix under which journal segments live.
const JournalPrefix = ".sstatefs/index/journal/"

// Segment is one journal segment: what one writer recorded in one write.
type Segment struct {
	Key      string    // store key (JournalPrefix + name)
	Writer   string    // the writer id from the key
	Time     time.Time // when it was written, from the key
	Added    []Object  // objects published, in the order recorded
	Accessed []Access  // last accesses, one per key
	// Reported: equivalences reported, in the order recorded.
	Reported []Equivalence
	// Signed: sign-offs recorded, in the order recorded.
	Signed []Signoff
	// Invalid counts the Reported and Signed records DecodeSegment
	// dropped as invalid (see the format description).
	Invalid int
}

// Access records that bitbake used an object at Time (to the second).
type Access struct {
	Key  string
	Time time.Time
}

const (
	segmentMagic   = "SSTFSJNL"
	segmentVersion = 4
	segHeaderLen   = 36 // every version

	recAdded    = 1
	recAccessed = 2
	recReported = 3 // version 2 on
	recChunked  = 4 // version 3 on
	recSigned   = 5 // version 4

	// maxSegmentRecords bounds the records a segment may declare; a
	// Journal writes at most MaxBatch objects and maxAccessPerSegment
	// access records in one.
	maxSegmentRecords = 1 << 20
	// maxSegmentBody bounds a segment's decompressed body.
	maxSegmentBody = 64 << 20
	// maxRecordLen is the longest encoded record: an object, or an
	// equivalence at the format's limits.
	// Chunk digests are bounded by maxSegmentBody alone.
	maxRecordLen = max(1+5*binary.MaxVarintLen64+MaxKeyLen+32, maxReportedLen)
	// maxFormatString and maxFormatHash (hex digits) bound the strings
	// and hashes of equivalence records in both formats; Validate allows
	// far less.
	maxFormatString = 4096
	maxFormatHash   = 255
	maxReportedLen  = 1 + 6*(binary.MaxVarintLen64+maxFormatString) +
		3*(binary.MaxVarintLen64+(maxFormatHash+1)/2) + binary.MaxVarintLen64

	maxWriterLen      = 63
	segmentRandLen    = 16                                             // hex digits
	maxSegmentNameLen = 20 + 1 + maxWriterLen + 1 + segmentRandLen + 4 // 4: ".seg"
)

// SanitizeWriter turns a host name or any other id into a writer id:
// lower case letters, digits and single dashes, at most 63 characters.
// It returns "" when nothing usable is left.
func SanitizeWriter(s string) string {
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(s) {
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(c)
			if b.Len() >= maxWriterLen {
				break
			}
			continue
		}
		dash = true
	}
	return strings.TrimRight(b.String()[:min(b.Len(), maxWriterLen)], "-")
}

// defaultWriter is the writer id when the caller gives none: the host name.
func defaultWriter(given string) string {
	if w := SanitizeWriter(given); w != "" {
		return w
	}
	h, _ := os.Hostname()
	if w := SanitizeWriter(h); w != "" {
		return w
	}
	return "sstatefs"
}

// segmentKey names a new segment of writer written at ns (unix
// nanoseconds, not negative).
func segmentKey(ns int64, writer string) string {
	var r [segmentRandLen / 2]byte
	rand.Read(r[:])
	return fmt.Sprintf("%s%020d-%s-%s.seg", JournalPrefix, ns, writer, hex.EncodeToString(r[:]))
}

// segmentName is what parseSegmentKey finds in a segment key.
type segmentName struct {
	time   int64 // unix nanoseconds
	writer string
}

// parseSegmentKey checks that key names a segment and returns its parts.
func parseSegmentKey(key string) (segmentName, bool) {
	name, ok := strings.CutPrefix(key, JournalPrefix)
	if !ok || len(name) > maxSegmentNameLen {
		return segmentName{}, false
	}
	name, ok = strings.CutSuffix(name, ".seg")
	if !ok || len(name) < 20+1+1+1+segmentRandLen || name[20] != '-' {
		return segmentName{}, false
	}
	for i := 0; i < 20; i++ {
		if name[i] < '0' || name[i] > '9' {
			return segmentName{}, false
		}
	}
	ns, err := strconv.ParseInt(name[:20], 10, 64)
	if err != nil {
		return segmentName{}, false
	}
	rest := name[21:]
	rnd := rest[len(rest)-segmentRandLen:]
	writer, ok := strings.CutSuffix(rest[:len(rest)-segmentRandLen], "-")
	if !ok || writer == "" || len(writer) > maxWriterLen {
		return segmentName{}, false
	}
	for i := 0; i < len(writer); i++ {
		if c := writer[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return segmentName{}, false
		}
	}
	for i := 0; i < len(rnd); i++ {
		if c := rnd[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return segmentName{}, false
		}
	}
	return segmentName{time: ns, writer: writer}, true
}

// segmentEncoder compresses segments. EncodeAll records the content size,
// so a reader allocates a window no larger than the segment.
var segmentEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithWindowSize(encoderWindow), zstd.WithEncoderConcurrency(1))
})

// EncodeSegment writes seg in the segment format: version 4 if it holds
// sign-offs, else version 3 if an object has chunk digests, else version 2
// if it holds equivalences, else version 1. It fails on records a reader
// would reject (invalid keys, negative sizes, chunk digests of the wrong
// number, zero access times, equivalences and sign-offs that fail
// Validate) and on segments with more than 2^20 records.
func EncodeSegment(w io.Writer, seg *Segment) error {
	n := len(seg.Added) + len(seg.Accessed) + len(seg.Reported) + len(seg.Signed)
	if n > maxSegmentRecords {
		return fmt.Errorf("encode segment: %d records (limit %d)", n, maxSegmentRecords)
	}
	var raw []byte
	version := uint32(1)
	chunked := false
	for _, o := range seg.Added {
		if o.Size < 0 || !validKey(o.Key) {
			return fmt.Errorf("encode segment: invalid object %q (size %d)", o.Key, o.Size)
		}
		if !validChunks(o.Size, o.Chunks) {
			return fmt.Errorf("encode segment: object %q of %d bytes with %d chunk digests, want 0 or %d",
				o.Key, o.Size, len(o.Chunks), NumChunks(o.Size))
		}
		kind := byte(recAdded)
		if len(o.Chunks) > 0 {
			kind, chunked = recChunked, true
		}
		raw = append(raw, kind)
		raw = binary.AppendUvarint(raw, uint64(len(o.Key)))
		raw = append(raw, o.Key...)
		raw = binary.AppendUvarint(raw, uint64(o.Size))
		raw = binary.AppendVarint(raw, toNanos(o.ModTime))
		raw = append(raw, o.SHA256[:]...)
		raw = binary.AppendUvarint(raw, uint64(toSecs(o.Accessed)))
		if kind == recChunked {
			raw = binary.AppendUvarint(raw, uint64(len(o.Chunks)))
			for k := range o.Chunks {
				raw = append(raw, o.Chunks[k][:]...)
			}
		}
	}
	for _, a := range seg.Accessed {
		if !validKey(a.Key) || a.Time.IsZero() {
			return fmt.Errorf("encode segment: invalid access record %q at %v", a.Key, a.Time)
		}
		raw = append(raw, recAccessed)
		raw = binary.AppendUvarint(raw, uint64(len(a.Key)))
		raw = append(raw, a.Key...)
		raw = binary.AppendUvarint(raw, uint64(toSecs(a.Time)))
	}
	for i := range seg.Reported {
		e := &seg.Reported[i]
		if err := e.Validate(); err != nil {
			return fmt.Errorf("encode segment: %w", err)
		}
		version = 2
		raw = append(raw, recReported)
		raw = appendString(raw, e.Method)
		raw = appendHash(raw, e.Taskhash)
		raw = appendHash(raw, e.Outhash)
		raw = appendHash(raw, e.Unihash)
		raw = binary.AppendVarint(raw, toNanos(e.Created))
		for _, f := range [...]string{e.PN, e.PV, e.PR, e.Task, e.Owner} {
			raw = appendString(raw, f)
		}
	}
	if chunked {
		version = 3
	}
	for i := range seg.Signed {
		g := &seg.Signed[i]
		if err := g.Validate(); err != nil {
			return fmt.Errorf("encode segment: %w", err)
		}
		version = 4
		raw = append(raw, recSigned)
		raw = appendSignoff(raw, g)
	}
	if len(raw) > maxSegmentBody {
		return fmt.Errorf("encode segment: body of %d bytes (limit %d)", len(raw), maxSegmentBody)
	}
	enc, err := segmentEncoder()
	if err != nil {
		return fmt.Errorf("encode segment: %w", err)
	}
	body := enc.EncodeAll(raw, nil)
	hdr := make([]byte, segHeaderLen)
	copy(hdr, segmentMagic)
	binary.LittleEndian.PutUint32(hdr[8:], version)
	binary.LittleEndian.PutUint64(hdr[12:], uint64(toNanos(seg.Time)))
	binary.LittleEndian.PutUint64(hdr[20:], uint64(n))
	binary.LittleEndian.PutUint64(hdr[28:], uint64(len(body)))
	if err := writeFrame(w, hdr, body); err != nil {
		return fmt.Errorf("encode segment: %w", err)
	}
	return nil
}

// appendString appends a string of an equivalence record (at most
// maxFormatString bytes, which Validate ensures).
func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendHash appends a hash: its digit count, then the digits packed.
func appendHash(b []byte, h string) []byte {
	b = binary.AppendUvarint(b, uint64(len(h)))
	return appendPacked(b, h)
}

func encodeSegment(seg *Segment) ([]byte, error) {
	var buf bytes.Buffer
	err := EncodeSegment(&buf, seg)
	return buf.Bytes(), err
}

var segmentSpec = frameSpec{
	magic: segmentMagic, what: "journal segment", minHeader: segHeaderLen, latest: segmentVersion,
	header: func(v uint32) int {
		if v >= 1 && v <= segmentVersion {
			return segHeaderLen
		}
		return 0
	},
	bodyLimit: func(hdr []byte) (uint64, error) {
		count := binary.LittleEndian.Uint64(hdr[20:])
		if count > maxSegmentRecords {
			return 0, corrupt("absurd record count %d (limit %d)", count, maxSegmentRecords)
		}
		if binary.LittleEndian.Uint32(hdr[8:]) >= 3 {
			// one object's chunk digests may take most of the body
			return maxSegmentBody + 4096, nil
		}
		return min(count*(maxRecordLen+1)+4096, maxSegmentBody+4096), nil
	},
	bodyLen: func(hdr []byte) uint64 { return binary.LittleEndian.Uint64(hdr[28:]) },
}

// errBodyTooLong marks a body that decompresses beyond maxSegmentBody.
var errBodyTooLong = errors.New("body decompresses to more than 64 MiB")

// boundedReader fails with errBodyTooLong after n bytes.
type boundedReader struct {
	r io.Reader
	n int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, decompressError{errBodyTooLong}
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	return n, err
}

// DecodeSegment reads a segment written by EncodeSegment, of version 1 to
// 4. Key and Writer are left empty (they come from the store key); Time is
// the one in the header. Damage is reported as an error wrapping
// ErrCorrupt that says what is wrong; a failure of r is returned as it is.
// A well-formed equivalence or sign-off record that fails Validate is
// dropped and counted in Invalid. Memory is bounded by what is actually read and by
// the format's limits.
func DecodeSegment(r io.Reader) (*Segment, error) { return decodeSegment(r, nil) }

// decodeSegment is DecodeSegment that, if accessed is not nil, passes the
// access records to it instead of keeping them in Accessed. The key it
// is passed is valid only during the call (no string is allocated): the
// loader folds millions of them into one access time a key.
func decodeSegment(r io.Reader, accessed func(key string, at uint32)) (*Segment, error) {
	hdr, body, err := readFrame(r, &segmentSpec)
	if err != nil {
		return nil, err
	}
	version := binary.LittleEndian.Uint32(hdr[8:])
	count := binary.LittleEndian.Uint64(hdr[20:])
	bodyLen := segmentSpec.bodyLen(hdr)
	seg := &Segment{Time: fromNanos(int64(binary.LittleEndian.Uint64(hdr[12:])))}

	zr, err := zstd.NewReader(body, zstd.WithDecoderMaxWindow(decoderWindow),
		zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxSegmentBody))
	if err != nil {
		return nil, fmt.Errorf("decode segment: %w", err)
	}
	defer zr.Close()
	br := bufio.NewReaderSize(&boundedReader{r: zstdReader{zr}, n: maxSegmentBody}, 16<<10)

	var (
		buf = make([]byte, 0, 256)
		sha [32]byte
		// Not count: a segment of 400,000 access records would
		// allocate as many objects it never holds.
		added = make([]Object, 0, min(count, bodyLen/32+16, 4096))
	)
	bad := func(i uint64, what string, err error) error {
		if errors.Is(err, io.EOF) && what == "record kind" {
			return corrupt("record count mismatch: header says %d records, body ends after %d", count, i)
		}
		return bodyError(fmt.Sprintf("record %d", i), what, err)
	}
	// readKeyAs reads a key; borrowed, it is valid until the next read.
	readKeyAs := func(i uint64, borrow bool) (string, error) {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return "", bad(i, "key length", err)
		}
		if n > MaxKeyLen {
			return "", corrupt("record %d: absurd key length %d (limit %d)", i, n, MaxKeyLen)
		}
		buf = resize(buf, int(n))
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", bad(i, "key", err)
		}
		// One allocation per key, no arena: Live keeps decoded segments,
		// most of them small, and an arena block each would dwarf them.
		var key string
		if borrow {
			key = unsafe.String(unsafe.SliceData(buf), len(buf))
		} else {
			key = string(buf)
		}
		if !validKey(key) {
			return "", corrupt("record %d: invalid key %s", i, quoteKey(key))
		}
		return key, nil
	}
	readKey := func(i uint64) (string, error) { return readKeyAs(i, false) }
	readSecs := func(i uint64, what string) (uint32, error) {
		s, err := binary.ReadUvarint(br)
		if err != nil {
			return 0, bad(i, what, err)
		}
		if s > math.MaxUint32 {
			return 0, corrupt("record %d: absurd %s %d", i, what, s)
		}
		return uint32(s), nil
	}
	// Methods, PN and the like repeat: one string each per segment.
	interned := map[string]string{}
	readString := func(i uint64, what string) (string, error) {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return "", bad(i, what+" length", err)
		}
		if n > maxFormatString {
			return "", corrupt("record %d: absurd %s length %d (limit %d)", i, what, n, maxFormatString)
		}
		buf = resize(buf, int(n))
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", bad(i, what, err)
		}
		if s, ok := interned[string(buf)]; ok {
			return s, nil
		}
		s := string(buf)
		interned[s] = s
		return s, nil
	}
	var hashBuf [(maxFormatHash + 1) / 2]byte
	readHash := func(i uint64, what string) (string, error) {
		p, n, err := readPacked(br, hashBuf[:0])
		if err != nil {
			return "", hashError(fmt.Sprintf("record %d", i), what, err)
		}
		return unpack(p, n), nil
	}
	for i := uint64(0); i < count; i++ {
		kind, err := br.ReadByte()
		if err != nil {
			return nil, bad(i, "record kind", err)
		}
		if kind == recReported && version < 2 || kind == recChunked && version < 3 || kind == recSigned && version < 4 {
			return nil, corrupt("record %d: unknown record kind %d in a version %d segment", i, kind, version)
		}
		switch kind {
		case recAdded, recChunked:
			key, err := readKey(i)
			if err != nil {
				return nil, err
			}
			size, err := binary.ReadUvarint(br)
			if err != nil {
				return nil, bad(i, "size", err)
			}
			if size > math.MaxInt64 {
				return nil, corrupt("record %d: absurd size %d", i, size)
			}
			mtime, err := binary.ReadVarint(br)
			if err != nil {
				return nil, bad(i, "modification time", err)
			}
			if _, err := io.ReadFull(br, sha[:]); err != nil {
				return nil, bad(i, "sha256", err)
			}
			at, err := readSecs(i, "access time")
			if err != nil {
				return nil, err
			}
			o := Object{Key: key, Size: int64(size), ModTime: fromNanos(mtime), SHA256: sha, Accessed: fromSecs(at)}
			if kind == recChunked {
				k, err := binary.ReadUvarint(br)
				if err != nil {
					return nil, bad(i, "chunk digest count", err)
				}
				if want := NumChunks(o.Size); want == 0 || k != uint64(want) {
					return nil, corrupt("record %d: %d chunk digests for %d bytes, want %d", i, k, o.Size, want)
				}
				// k is bounded by the size, which the body need not hold:
				// read before allocating, a digest at a time.
				for range k {
					var c [32]byte
					if _, err := io.ReadFull(br, c[:]); err != nil {
						return nil, bad(i, "chunk digest", err)
					}
					o.Chunks = append(o.Chunks, c)
				}
			}
			added = append(added, o)
		case recAccessed:
			key, err := readKeyAs(i, accessed != nil)
			if err != nil {
				return nil, err
			}
			at, err := readSecs(i, "access time")
			if err != nil {
				return nil, err
			}
			if at == 0 {
				return nil, corrupt("record %d: access record without a time", i)
			}
			if accessed != nil {
				accessed(key, at)
			} else {
				seg.Accessed = append(seg.Accessed, Access{Key: key, Time: fromSecs(at)})
			}
		case recReported:
			var e Equivalence
			if e.Method, err = readString(i, "method"); err != nil {
				return nil, err
			}
			for _, h := range [...]struct {
				dst  *string
				what string
			}{{&e.Taskhash, "taskhash"}, {&e.Outhash, "outhash"}, {&e.Unihash, "unihash"}} {
				if *h.dst, err = readHash(i, h.what); err != nil {
					return nil, err
				}
			}
			created, err := binary.ReadVarint(br)
			if err != nil {
				return nil, bad(i, "created", err)
			}
			e.Created = fromNanos(created)
			for _, f := range [...]struct {
				dst  *string
				what string
			}{{&e.PN, "PN"}, {&e.PV, "PV"}, {&e.PR, "PR"}, {&e.Task, "task"}, {&e.Owner, "owner"}} {
				if *f.dst, err = readString(i, f.what); err != nil {
					return nil, err
				}
			}
			if e.Validate() != nil {
				seg.Invalid++
				continue
			}
			seg.Reported = append(seg.Reported, e)
		case recSigned:
			var g Signoff
			if g, buf, err = readSignoff(br, fmt.Sprintf("record %d", i), buf); err != nil {
				return nil, err
			}
			if g.Validate() != nil {
				seg.Invalid++
				continue
			}
			seg.Signed = append(seg.Signed, g)
		default:
			return nil, corrupt("record %d: unknown record kind %d", i, kind)
		}
	}
	if err := checkBodyEnd(br, count, "record", "records"); err != nil {
		return nil, err
	}
	if len(added) > 0 {
		seg.Added = added[:len(added):len(added)]
	}
	return seg, nil
}

// errHashPadding marks a hash whose unused low nibble is not zero.
var errHashPadding = errors.New("hash with a non-zero pad nibble")

// errHashLength marks a hash longer than maxFormatHash digits.
type errHashLength uint64

func (e errHashLength) Error() string {
	return fmt.Sprintf("absurd hash length %d digits (limit %d)", uint64(e), maxFormatHash)
}

// readPacked reads a hash (digit count, packed digits) and appends the
// packed digits to dst. Its errors are br's, errHashPadding and
// errHashLength; hashError turns them into corrupt errors.
func readPacked(br *bufio.Reader, dst []byte) ([]byte, int, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return dst, 0, err
	}
	if n > maxFormatHash {
		return dst, 0, errHashLength(n)
	}
	k := packedLen(int(n))
	dst = slices.Grow(dst, k)
	p := dst[len(dst) : len(dst)+k]
	if _, err := io.ReadFull(br, p); err != nil {
		return dst, 0, err
	}
	if n%2 == 1 && p[k-1]&15 != 0 {
		return dst, 0, errHashPadding
	}
	return dst[:len(dst)+k], int(n), nil
}

// hashError reports a readPacked failure in <where> as corruption.
func hashError(where, what string, err error) error {
	var hl errHashLength
	switch {
	case errors.As(err, &hl):
		return corrupt("%s: %s: %v", where, what, err)
	case errors.Is(err, errHashPadding):
		return corrupt("%s: %s: %v", where, what, err)
	}
	return bodyError(where, what, err)
}
