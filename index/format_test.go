package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/klauspost/compress/zstd"
)

func encode(t testing.TB, ix *Index) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Encode(&buf, ix); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readGolden reads a file of testdata, failing the test unless its header
// (a snapshot's or a segment's) says version.
func readGolden(t *testing.T, path string, version uint32) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != version {
		t.Fatalf("testdata has version %d", v)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	var sha [32]byte
	for i := range sha {
		sha[i] = byte(i + 1)
	}
	edge := []Object{
		{Key: "a", Size: 0, Accessed: time.Unix(1, 0)},                   // zero time, zero digest, earliest access
		{Key: "ab", Size: math.MaxInt64 / 2, ModTime: time.Unix(0, 1)},   // 1970 + 1 ns
		{Key: "ab/c", Size: 1, ModTime: time.Unix(-1e9, 5), SHA256: sha}, // before 1970
		{Key: "ab/cd", Size: 7, ModTime: time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Key: "b", Size: 1 << 40, ModTime: time.Unix(1_750_000_000, 999_999_999), SHA256: sha,
			Accessed: time.Unix(1<<32-1, 0)}, // latest access
		{Key: strings.Repeat("k", MaxKeyLen), Size: 3, ModTime: time.Unix(1, 0)},
	}
	accessed := randomObjects(synthKeys(t, 3000, 3), 9)
	for i := range accessed {
		if i%3 == 0 {
			accessed[i].Accessed = time.Unix(1_750_000_000+int64(i), 0)
		}
	}
	for _, tc := range []struct {
		name     string
		objs     []Object
		created  time.Time
		covered  []string
		complete bool
	}{
		{"empty", nil, time.Time{}, nil, true},
		{"one", []Object{{Key: "x", Size: 1, ModTime: time.Unix(1, 2), SHA256: sha}}, time.Unix(3, 4), nil, true},
		{"edge", edge, time.Now(), nil, true},
		{"realistic", randomObjects(realisticKeys(t), 7), time.Now(), nil, true},
		{"synthetic", randomObjects(synthKeys(t, 5000, 1), 8), time.Unix(1_750_000_000, 1), nil, true},
		{"accessed and covered", accessed, time.Now(), testSegKeys(50), true},
		{"incomplete", accessed[:10], time.Now(), testSegKeys(3), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := New(tc.objs, tc.created)
			ix.covered, ix.complete = tc.covered, tc.complete
			got, err := Decode(bytes.NewReader(encode(t, ix)))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Covered(), tc.covered) || got.Sources().Complete != tc.complete || !got.Sources().Snapshot {
				t.Errorf("covered %d (want %d), sources %+v", len(got.Covered()), len(tc.covered), got.Sources())
			}
			if got.Len() != ix.Len() || got.TotalSize() != ix.TotalSize() || !got.Created().Equal(tc.created) ||
				got.Created().IsZero() != tc.created.IsZero() {
				t.Errorf("Len %d/%d TotalSize %d/%d Created %v/%v", got.Len(), ix.Len(),
					got.TotalSize(), ix.TotalSize(), got.Created(), tc.created)
			}
			if !reflect.DeepEqual(collect(got), collect(ix)) {
				t.Error("objects differ after the round trip")
			}
			// And against the input itself: times to the nanosecond.
			for _, o := range tc.objs {
				d, ok := got.Lookup(o.Key)
				if !ok || d.Size != o.Size || d.SHA256 != o.SHA256 || !d.ModTime.Equal(o.ModTime) ||
					d.ModTime.IsZero() != o.ModTime.IsZero() || !d.Accessed.Equal(o.Accessed.Truncate(time.Second)) {
					t.Fatalf("Lookup(%.40q) = %+v, %v; want %+v", o.Key, d, ok, o)
				}
			}
			if !bytes.Equal(encode(t, got), encode(t, ix)) {
				t.Error("re-encoding differs")
			}
		})
	}
}

// fixSum recomputes the trailer after a deliberate change.
func fixSum(b []byte) []byte {
	if len(b) >= trailerLen {
		sum := sha256.Sum256(b[:len(b)-trailerLen])
		copy(b[len(b)-trailerLen:], sum[:])
	}
	return b
}

var testEncoder, _ = zstd.NewWriter(nil)

// testSegKeys returns n valid, sorted segment keys.
func testSegKeys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%020d-host-%d-%016x.seg", JournalPrefix, 1_750_000_000_000_000_000+i, i%4, i)
	}
	return out
}

// writeSnapshotV1 frames an already compressed body as version 1.
func writeSnapshotV1(w io.Writer, created int64, count uint64, body []byte) {
	hdr := make([]byte, headerLenV1)
	copy(hdr, magic)
	binary.LittleEndian.PutUint32(hdr[8:], 1)
	binary.LittleEndian.PutUint64(hdr[12:], uint64(created))
	binary.LittleEndian.PutUint64(hdr[20:], count)
	binary.LittleEndian.PutUint64(hdr[28:], uint64(len(body)))
	writeFrame(w, hdr, body)
}

// writeSnapshotV2 frames an already compressed body as version 2.
func writeSnapshotV2(w io.Writer, flags uint32, count, covered uint64, body []byte) {
	hdr := make([]byte, headerLenV2)
	copy(hdr, magic)
	binary.LittleEndian.PutUint32(hdr[8:], 2)
	binary.LittleEndian.PutUint32(hdr[12:], flags)
	binary.LittleEndian.PutUint64(hdr[24:], count)
	binary.LittleEndian.PutUint64(hdr[32:], covered)
	binary.LittleEndian.PutUint64(hdr[40:], uint64(len(body)))
	writeFrame(w, hdr, body)
}

// frame builds a version 1 snapshot around a raw (uncompressed) body, as
// a hostile or buggy writer could.
func frame(count uint64, raw []byte) []byte {
	var buf bytes.Buffer
	writeSnapshotV1(&buf, 0, count, testEncoder.EncodeAll(raw, nil))
	return buf.Bytes()
}

// frame2 builds a version 2 snapshot around a raw body.
func frame2(count, covered uint64, raw []byte) []byte {
	var buf bytes.Buffer
	writeSnapshotV2(&buf, flagComplete, count, covered, testEncoder.EncodeAll(raw, nil))
	return buf.Bytes()
}

// rawCovered encodes a covered segment name.
func rawCovered(name string) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(name))), name...)
}

// rawEntry2 encodes one version 2 entry.
func rawEntry2(key string, atime uint64) []byte {
	return binary.AppendUvarint(entryOf(key), atime)
}

// rawEntry encodes one entry, lengths given explicitly so they can lie.
func rawEntry(shared, suffixLen uint64, suffix string, size uint64, mtime int64) []byte {
	b := binary.AppendUvarint(nil, shared)
	b = binary.AppendUvarint(b, suffixLen)
	b = append(b, suffix...)
	b = binary.AppendUvarint(b, size)
	b = binary.AppendVarint(b, mtime)
	return append(b, make([]byte, 32)...)
}

func entryOf(key string) []byte { return rawEntry(0, uint64(len(key)), key, 1, 1) }

func cat(bs ...[]byte) []byte { return slices.Concat(bs...) }

func TestDecodeCorrupt(t *testing.T) {
	good := encode(t, New(randomObjects(realisticKeys(t)[:20], 9), time.Unix(1, 0)))
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	setU64 := func(off int, v uint64) []byte {
		return edit(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return fixSum(b) })
	}
	setU32 := func(off int, v uint32) []byte {
		return edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return fixSum(b) })
	}
	count := binary.LittleEndian.Uint64(good[24:])
	bodyLen := binary.LittleEndian.Uint64(good[40:])
	seg := strings.TrimPrefix(testSegKeys(1)[0], JournalPrefix)
	seg2 := strings.TrimPrefix(testSegKeys(2)[1], JournalPrefix)

	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"empty", "truncated: 0 bytes, shorter than the 36-byte header", nil},
		{"short prefix", "truncated: 10 bytes, shorter than the 36-byte header", good[:10]},
		{"short header", "truncated: 20 bytes, shorter than the 48-byte header", good[:20]},
		{"short v1 header", "truncated: 30 bytes, shorter than the 36-byte header", frame(1, entryOf("a"))[:30]},
		{"bad magic", `bad magic "XSTFSIDX"`, edit(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"gzip", "bad magic", append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}, good[8:]...)},
		{"segment", `bad magic "SSTFSJNL", want "SSTFSIDX" (not an sstatefs index)`, encodeSeg(t, &Segment{})},
		{"version 6", "unsupported version 6 (this sstatefs reads versions up to 5)", setU32(8, 6)},
		{"version 0", "unsupported version 0", setU32(8, 0)},
		{"unknown flag", "unknown flags 0x3", setU32(12, 3)},
		{"body bit flip", "checksum mismatch", edit(func(b []byte) []byte { b[headerLenV2+10] ^= 1; return b })},
		{"created changed", "checksum mismatch", edit(func(b []byte) []byte { b[16] ^= 1; return b })},
		{"flags changed", "checksum mismatch", edit(func(b []byte) []byte { b[12] ^= 1; return b })},
		{"trailer bit flip", "checksum mismatch", edit(func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b })},
		{"cut trailer", "truncated", good[:len(good)-1]},
		{"cut body", "truncated", good[:headerLenV2+5]},
		{"header only", "truncated: 0 bytes after the header", good[:headerLenV2]},
		{"trailing data", "trailing data after the checksum", append(bytes.Clone(good), 0)},
		{"count too high", "entry count mismatch: header says 21 entries, body ends after 20", setU64(24, count+1)},
		{"count too low", "entry count mismatch: header says 19 entries, body has more", setU64(24, count-1)},
		{"absurd count", "absurd object count 1099511627776", setU64(24, 1<<40)},
		{"absurd covered count", "absurd covered segment count 1099511627776", setU64(32, 1<<40)},
		{"covered count too high", "covered segment 0", setU64(32, 1)},
		{"absurd body length", "absurd body length", setU64(40, 1<<50)},
		{"body length too long", "truncated", setU64(40, bodyLen+1)},
		{"body length too short", "trailing data", setU64(40, bodyLen-1)},
		{"equal keys", "keys not strictly increasing: entry 1",
			frame(2, cat(entryOf("a/b"), rawEntry(3, 0, "", 1, 1)))},
		{"decreasing keys", `keys not strictly increasing: entry 1 "a/a" follows "a/b"`,
			frame(2, cat(entryOf("a/b"), rawEntry(2, 1, "a", 1, 1)))},
		{"shared too long", "entry 1: shared prefix length 4 exceeds the previous key's 3 bytes",
			frame(2, cat(entryOf("a/b"), rawEntry(4, 1, "c", 1, 1)))},
		{"shared in first entry", "entry 0: shared prefix length 1 exceeds the previous key's 0 bytes",
			frame(1, rawEntry(1, 1, "a", 1, 1))},
		{"absurd suffix length", "entry 0: absurd key length 0+1099511627776",
			frame(1, rawEntry(0, 1<<40, "a", 1, 1))},
		{"key too long", "absurd key length 0+4097", frame(1, entryOf(strings.Repeat("k", MaxKeyLen+1)))},
		{"absurd size", "entry 0: absurd size 9223372036854775808", frame(1, rawEntry(0, 1, "a", 1<<63, 1))},
		{"total overflows", "entry 1: total size overflows",
			frame(2, cat(rawEntry(0, 1, "a", math.MaxInt64, 1), rawEntry(0, 1, "b", 1, 1)))},
		{"empty key", `entry 0: invalid key ""`, frame(1, entryOf(""))},
		{"double slash", `invalid key "a//b"`, frame(1, entryOf("a//b"))},
		{"dot dot", `invalid key "../b"`, frame(1, entryOf("../b"))},
		{"absolute", `invalid key "/b"`, frame(1, entryOf("/b"))},
		{"nul", `invalid key`, frame(1, entryOf("a\x00"))},
		{"metadata key", `invalid key ".sstatefs/index/snapshot.v1"`, frame(1, entryOf(SnapshotKey))},
		{"varint overflow", "entry 0: bad shared prefix length", frame(1, bytes.Repeat([]byte{0xff}, 11))},
		{"entry cut in key", "entry 0: truncated body in key", frame(1, rawEntry(0, 5, "ab", 1, 1)[:4])},
		{"entry cut in digest", "entry 0: truncated body in sha256", frame(1, entryOf("a")[:20])},
		{"extra entry", "entry count mismatch: header says 0 entries, body has more", frame(0, entryOf("a"))},
		{"v2 entry without access time", "entry 0: truncated body in access time", frame2(1, 0, entryOf("a"))},
		{"v2 absurd access time", "entry 0: absurd access time 4294967296", frame2(1, 0, rawEntry2("a", 1<<32))},
		{"v2 covered name invalid", `covered segment 0: invalid name "x.seg"`, frame2(0, 1, rawCovered("x.seg"))},
		{"v2 covered name with slash", "covered segment 0: invalid name",
			frame2(0, 1, rawCovered("../"+seg))},
		{"v2 covered name too long", "covered segment 0: absurd name length 200", frame2(0, 1, rawCovered(strings.Repeat("1", 200)))},
		{"v2 covered not increasing", "covered segments not strictly increasing: 1",
			frame2(0, 2, cat(rawCovered(seg2), rawCovered(seg)))},
		{"v2 covered twice", "covered segments not strictly increasing: 1",
			frame2(0, 2, cat(rawCovered(seg), rawCovered(seg)))},
		{"v2 covered cut", "covered segment 0: truncated body in name", frame2(0, 1, rawCovered(seg)[:10])},
		{"body not zstd", "entry 0: decompress body", func() []byte {
			var buf bytes.Buffer
			writeSnapshotV1(&buf, 0, 1, []byte("this is not zstd at all, no"))
			return buf.Bytes()
		}()},
		{"zstd window too large", "decompress body", func() []byte {
			// A frame header announcing a 1 GiB window.
			var buf bytes.Buffer
			writeSnapshotV1(&buf, 0, 1, []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa0, 0x01, 0x00, 0x00})
			return buf.Bytes()
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) { wantCorrupt(t, tc.in, tc.want) })
	}
}

// wantCorrupt checks that Decode refuses in with ErrCorrupt saying want.
func wantCorrupt(t *testing.T, in []byte, want string) {
	t.Helper()
	ix, err := Decode(bytes.NewReader(in))
	if err == nil {
		t.Fatalf("decoded %d objects and %d equivalences, want error %q", ix.Len(), ix.NumEquivalences(), want)
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
		t.Errorf("error %q, want ErrCorrupt saying %q", err, want)
	}
}

// TestDecodeV1 reads a version 1 snapshot written by the version 1 encoder
// (testdata/snapshot-v1.bin): no covered segments, no access times,
// complete.
func TestDecodeV1(t *testing.T) {
	got, err := Decode(bytes.NewReader(readGolden(t, "testdata/snapshot-v1.bin", 1)))
	if err != nil {
		t.Fatal(err)
	}
	objs := append(randomObjects(realisticKeys(t)[:40], 77), Object{Key: "zz/empty", Size: 0})
	want := New(objs, time.Unix(1_750_000_000, 123))
	if !reflect.DeepEqual(collect(got), collect(want)) || !got.Created().Equal(want.Created()) {
		t.Error("version 1 snapshot decodes differently")
	}
	if src := got.Sources(); !src.Snapshot || !src.Complete || src.Covered != 0 || got.base.at != nil {
		t.Errorf("sources %+v, access times %v", src, got.base.at != nil)
	}
	// Written again, it is version 2 (no equivalences) and decodes the same.
	again := encode(t, got)
	if v := binary.LittleEndian.Uint32(again[8:]); v != 2 {
		t.Errorf("Encode wrote version %d", v)
	}
	if d, err := Decode(bytes.NewReader(again)); err != nil || !reflect.DeepEqual(collect(d), collect(want)) {
		t.Errorf("re-encoded: %v", err)
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

func TestDecodeReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := Decode(failingReader{boom})
	if !errors.Is(err, boom) || errors.Is(err, ErrCorrupt) {
		t.Errorf("error %v, want the reader's error, not ErrCorrupt", err)
	}
}

func TestDecodeReaders(t *testing.T) {
	ix := New(randomObjects(synthKeys(t, 3000, 5), 5), time.Now())
	data := encode(t, ix)
	for name, r := range map[string]io.Reader{
		"one byte":      iotest.OneByteReader(bytes.NewReader(data)),
		"half":          iotest.HalfReader(bytes.NewReader(data)),
		"data with EOF": iotest.DataErrReader(bytes.NewReader(data)),
	} {
		got, err := Decode(r)
		if err != nil || !reflect.DeepEqual(collect(got), collect(ix)) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A reader's own io.ErrUnexpectedEOF (a connection cut) is not damage.
	for _, n := range []int{10, 1000} {
		r := io.MultiReader(bytes.NewReader(data[:n]), iotest.ErrReader(io.ErrUnexpectedEOF))
		if _, err := Decode(r); !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrCorrupt) {
			t.Errorf("cut after %d bytes: %v, want the reader's error", n, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	if v1, err := os.ReadFile("testdata/snapshot-v1.bin"); err == nil {
		f.Add(v1)
	}
	withAll := New([]Object{{Key: "a/b", Size: 1, Accessed: time.Unix(5, 0)}, {Key: "a/c", Size: 2}}, time.Unix(1, 0))
	withAll.covered = testSegKeys(3)
	f.Add(encode(f, withAll))
	f.Add(frame2(1, 1, cat(rawCovered(strings.TrimPrefix(testSegKeys(1)[0], JournalPrefix)), rawEntry2("a", 7))))
	f.Add(encode(f, New(nil, time.Time{})))
	f.Add(encode(f, New([]Object{{Key: "a/b", Size: 1}}, time.Unix(1, 0))))
	f.Add(encode(f, New(randomObjects(realisticKeys(f)[:40], 1), time.Unix(1, 0))))
	f.Add(frame(2, cat(entryOf("a/b"), rawEntry(2, 1, "c", 1, 1))))
	if v2, err := os.ReadFile("testdata/snapshot-v2.bin"); err == nil {
		f.Add(v2)
	}
	eqIx := withEqs(New([]Object{{Key: "a/b", Size: 1}}, time.Unix(1, 0)), testEq(1, "do_a"), testEq(1, "do_b"),
		Equivalence{Method: "m", Taskhash: "abcde", Unihash: "01234", Outhash: testEq(1, "do_a").Outhash},
		Equivalence{Method: "do_a", Taskhash: hexOf(1), Unihash: hexOf(7), Outhash: "9999"})
	f.Add(encode(f, eqIx))
	if v4, err := os.ReadFile("testdata/snapshot-v4.bin"); err == nil {
		f.Add(v4)
	}
	f.Add(encode(f, New(chunkedObjects(f, realisticKeys(f)[:10], 3), time.Unix(1, 0))))
	if v5, err := os.ReadFile("testdata/snapshot-v5.bin"); err == nil {
		f.Add(v5)
	}
	sigIx := New([]Object{testObject(1), testObject(2)}, time.Unix(1, 0))
	sigIx.sigBase = sigRun{signoffOf(testObject(1), 1, "a"), signoffOf(testObject(2), 1, "b"), signoffOf(testObject(2), 2, "c")}
	f.Add(encode(f, sigIx))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecode(t, data)
		// Most mutations only break the checksum; repair it so the
		// body parser sees them too.
		checkDecode(t, fixSum(bytes.Clone(data)))
	})
}

// FuzzDecodeBody feeds arbitrary uncompressed bodies to the entry parser.
func FuzzDecodeBody(f *testing.F) {
	f.Add(uint16(0), []byte{})
	f.Add(uint16(2), cat(entryOf("a/b"), rawEntry(2, 1, "c", 1, 1)))
	var raw bytes.Buffer
	ix := New(randomObjects(realisticKeys(f)[:30], 2), time.Time{})
	for i := range ix.base.es {
		e := &ix.base.es[i]
		raw.Write(rawEntry(0, uint64(len(e.key)), e.key, uint64(e.size), e.mtime))
	}
	f.Add(uint16(30), raw.Bytes())
	chunked := rawEntry(0, 1, "a", 2*ChunkSize+1, 1)
	chunked = binary.AppendUvarint(chunked, 0)
	chunked = binary.AppendUvarint(chunked, 3)
	f.Add(uint16(1), append(chunked, make([]byte, 3*32)...))
	f.Fuzz(func(t *testing.T, count uint16, body []byte) {
		checkDecode(t, frame(uint64(count), body))
		checkDecode(t, frame2(uint64(count), uint64(count%3), body))
		// version 4: the digest count from the count's high bits
		checkDecode(t, frame4(uint64(count&0xff), uint64(count>>8), body))
	})
}

// checkDecode decodes data; whatever it accepts must be a well-formed index
// that survives a round trip, whatever it rejects must say it is corrupt.
func checkDecode(t *testing.T, data []byte) {
	ix, err := Decode(bytes.NewReader(data))
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error does not wrap ErrCorrupt: %v", err)
		}
		return
	}
	prev := ""
	var total int64
	for i, o := range collect(ix) {
		if !validKey(o.Key) || (i > 0 && o.Key <= prev) || o.Size < 0 || !validChunks(o.Size, o.Chunks) {
			t.Fatalf("accepted bad object %d %+v after %q", i, o, prev)
		}
		prev = o.Key
		total += o.Size
	}
	if total != ix.TotalSize() {
		t.Fatalf("TotalSize %d, sum %d", ix.TotalSize(), total)
	}
	again, err := Decode(bytes.NewReader(encode(t, ix)))
	if err != nil {
		t.Fatalf("re-encoded index does not decode: %v", err)
	}
	if !reflect.DeepEqual(collect(again), collect(ix)) || again.created != ix.created ||
		!slices.Equal(again.covered, ix.covered) || again.complete != ix.complete ||
		!reflect.DeepEqual(eqDump(again), eqDump(ix)) || again.Sources().Invalid != 0 ||
		!reflect.DeepEqual(again.countingSignoffs(), ix.countingSignoffs()) {
		t.Fatal("round trip of an accepted index differs")
	}
	for s := range ix.EachSignoff {
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted an invalid sign-off: %v", err)
		}
	}
	checkEquivalences(t, ix)
	for _, k := range ix.covered {
		if _, ok := parseSegmentKey(k); !ok {
			t.Fatalf("accepted bad covered segment %q", k)
		}
	}
}

// checkEquivalences checks that the equivalences of an accepted index are
// valid, ordered, and found by every query.
func checkEquivalences(t *testing.T, ix *Index) {
	t.Helper()
	var prev *Equivalence
	n := 0
	for e := range ix.Equivalences {
		if err := e.Validate(); err != nil {
			t.Fatalf("accepted an invalid equivalence: %v", err)
		}
		if prev != nil && (e.Taskhash < prev.Taskhash || e.Taskhash == prev.Taskhash && e.Method <= prev.Method) {
			t.Fatalf("equivalences out of order: %+v after %+v", e, *prev)
		}
		if g, ok := ix.Equivalence(e.Method, e.Taskhash); !ok || !reflect.DeepEqual(g, e) {
			t.Fatalf("Equivalence(%s, %s) = %+v, %v", e.Method, e.Taskhash, g, ok)
		}
		if g, ok := ix.ByTaskhash(e.Taskhash); !ok || g.Method > e.Method {
			t.Fatalf("ByTaskhash(%s) = %+v, %v", e.Taskhash, g, ok)
		}
		if !ix.UnihashKnown(e.Unihash) {
			t.Fatalf("UnihashKnown(%s) = false", e.Unihash)
		}
		prev = &e
		n++
	}
	if n != ix.NumEquivalences() {
		t.Fatalf("NumEquivalences %d, listed %d", ix.NumEquivalences(), n)
	}
	for _, it := range eqDump(ix) {
		if it.Flags&eqFirstOut == 0 {
			continue
		}
		g, ok := ix.ByOuthash(it.E.Method, it.E.Outhash)
		w, found := ix.Equivalence(it.E.Method, it.E.Taskhash)
		if !ok || !found || g.Taskhash != it.E.Taskhash || g.Unihash != w.Unihash {
			t.Fatalf("ByOuthash(%s, %s) = %+v, %v", it.E.Method, it.E.Outhash, g, ok)
		}
	}
}

// FuzzDecodeEquivalences feeds arbitrary uncompressed equivalence
// sections to their parser.
func FuzzDecodeEquivalences(f *testing.F) {
	w := byte(eqWinner | eqFirstOut)
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	f.Add(uint16(0), []byte{0})
	f.Add(uint16(2), cat(rawStrings("do_x"), rawEqs(rawEq{flags: w, method: 1, th: a, oh: "1111", uh: "abcd"},
		rawEq{flags: w | eqSameUnihash, method: 1, th: b, oh: "2222"})))
	f.Add(uint16(3), cat(rawStrings("bad\n", "do_x", "zlib"), rawEqs(
		rawEq{flags: eqWinner, method: 2, th: a, oh: "abcde", uh: "0123", ids: [5]uint64{3, 1}},
		rawEq{flags: eqFirstOut, method: 2, th: a, oh: "1234", uh: b},
		rawEq{flags: w, method: 3, th: b, oh: "12", uh: "abc"})))
	seed := realisticEquivalences(20, 5)
	seed.covered = nil
	full := encode(f, seed)
	f.Add(uint16(20), func() []byte {
		// The body of a real snapshot, decompressed: no entries, no
		// covered names, just the equivalence section.
		d, _ := zstd.NewReader(nil)
		defer d.Close()
		out, _ := d.DecodeAll(full[headerLenV3:len(full)-trailerLen], nil)
		return out
	}())
	f.Fuzz(func(t *testing.T, count uint16, body []byte) {
		checkDecode(t, frame3(0, 0, uint64(count), body))
	})
}

// TestDecode100k measures what the benchmark target is about: decode time
// and heap bytes per object of a realistic 100,000-object index.
func TestDecode100k(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const n = 100_000
	data := encode(t, New(randomObjects(synthKeys(t, n, 42), 42), time.Now()))
	keyBytes := 0
	for _, k := range synthKeys(t, n, 42) {
		keyBytes += len(k)
	}
	ix, elapsed, heap := timedDecode(t, data)
	perObj := heap / n
	t.Logf("100k objects: snapshot %d bytes (%.1f/object), decode %v, heap %.1f bytes/object (keys average %.1f bytes)",
		len(data), float64(len(data))/n, elapsed, perObj, float64(keyBytes)/n)
	if ix.Len() != n {
		t.Fatalf("Len = %d", ix.Len())
	}
	// Entry (64 bytes) plus key; a generous bound that catches a
	// regression such as per-key allocations or unclipped slices.
	if limit := 64 + float64(keyBytes)/n + 24; perObj > limit {
		t.Errorf("heap %.1f bytes/object, want at most %.1f", perObj, limit)
	}
	runtime.KeepAlive(ix)
	runtime.KeepAlive(data) // its memory is not part of the index's
}
