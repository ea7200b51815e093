package index

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend/file"
)

// chunkSums returns what the chunk digests of data are, computed directly.
func chunkSums(data []byte) [][32]byte {
	if len(data) <= ChunkSize {
		return nil
	}
	var out [][32]byte
	for off := 0; off < len(data); off += ChunkSize {
		out = append(out, sha256.Sum256(data[off:min(off+ChunkSize, len(data))]))
	}
	return out
}

func TestDigester(t *testing.T) {
	data := make([]byte, 3*ChunkSize+5)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	for _, n := range []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 2 * ChunkSize, len(data)} {
		d := NewDigester()
		// odd write sizes, across chunk boundaries
		for off := 0; off < n; {
			k := min(n-off, 100_003)
			d.Write(data[off : off+k])
			off += k
		}
		sum, chunks := d.Sum()
		if sum != sha256.Sum256(data[:n]) || d.Size() != int64(n) {
			t.Errorf("%d bytes: wrong digest or size", n)
		}
		if want := chunkSums(data[:n]); !reflect.DeepEqual(chunks, want) || len(chunks) != NumChunks(int64(n)) {
			t.Errorf("%d bytes: %d chunk digests, want %d", n, len(chunks), len(want))
		}
	}
}

// fakeChunks returns NumChunks(size) distinct digests.
func fakeChunks(size int64, seed byte) [][32]byte {
	out := make([][32]byte, NumChunks(size))
	for k := range out {
		out[k] = sha256.Sum256([]byte{seed, byte(k), byte(k >> 8)})
	}
	return out
}

// chunkedObjects are realistic objects, every third larger than ChunkSize
// with chunk digests, every fifth large without (recorded by an older
// sstatefs).
func chunkedObjects(t testing.TB, keys []string, seed uint64) []Object {
	objs := randomObjects(keys, seed)
	for i := range objs {
		switch {
		case i%3 == 0:
			objs[i].Size = int64(i+1)*ChunkSize/3 + ChunkSize + 1
			objs[i].Chunks = fakeChunks(objs[i].Size, byte(i))
		case i%5 == 0:
			objs[i].Size = 5 * ChunkSize
		default:
			objs[i].Size = int64(i) * 1000
		}
	}
	return objs
}

func TestChunksSnapshotRoundTrip(t *testing.T) {
	objs := chunkedObjects(t, realisticKeys(t)[:60], 5)
	ix := New(objs, time.Unix(1, 0))
	b := encode(t, ix)
	if v := binary.LittleEndian.Uint32(b[8:]); v != 4 {
		t.Fatalf("an index with chunk digests encoded as version %d, want 4", v)
	}
	got, err := Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(collect(got), collect(ix)) {
		t.Fatal("chunk digests do not survive a snapshot round trip")
	}
	n := 0
	for _, o := range objs {
		g, ok := got.Lookup(o.Key)
		if !ok || !reflect.DeepEqual(g.Chunks, o.Chunks) {
			t.Fatalf("Lookup(%s): %d chunk digests, want %d", o.Key, len(g.Chunks), len(o.Chunks))
		}
		n += len(o.Chunks)
	}
	if n == 0 || got.numChunkDigests() != n {
		t.Fatalf("%d chunk digests held, want %d", got.numChunkDigests(), n)
	}
	// With equivalences too, still version 4, and both survive.
	with := withEqs(got, testEq(1, "do_a"))
	d, err := Decode(bytes.NewReader(encode(t, with)))
	if err != nil || !reflect.DeepEqual(collect(d), collect(ix)) || d.NumEquivalences() != 1 {
		t.Fatalf("with an equivalence: %v", err)
	}
	// Without any, the version older readers know.
	plain := New(randomObjects(realisticKeys(t)[:5], 1), time.Unix(1, 0))
	if v := binary.LittleEndian.Uint32(encode(t, plain)[8:]); v != 2 {
		t.Errorf("an index without chunk digests encoded as version %d, want 2", v)
	}
}

func TestChunksSegmentRoundTripAndApply(t *testing.T) {
	objs := chunkedObjects(t, realisticKeys(t)[60:75], 7)
	seg := &Segment{Key: segmentKey(1, "w"), Time: time.Unix(3, 0), Added: objs}
	b := encodeSeg(t, seg)
	if v := binary.LittleEndian.Uint32(b[8:]); v != 3 {
		t.Fatalf("a segment with chunk digests encoded as version %d, want 3", v)
	}
	got, err := DecodeSegment(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range objs {
		if !reflect.DeepEqual(got.Added[i].Chunks, o.Chunks) {
			t.Fatalf("object %d: %d chunk digests after a segment round trip, want %d", i, len(got.Added[i].Chunks), len(o.Chunks))
		}
	}
	// Applied on a snapshot, then compacted into a new one: kept.
	got.Key = seg.Key
	base, err := Decode(bytes.NewReader(encode(t, New(chunkedObjects(t, realisticKeys(t)[:30], 9), time.Unix(1, 0)))))
	if err != nil {
		t.Fatal(err)
	}
	ix := apply(base, []*Segment{got})
	for _, o := range objs {
		if g, ok := ix.Lookup(o.Key); !ok || !reflect.DeepEqual(g.Chunks, o.Chunks) {
			t.Fatalf("applied segment: %s has %d chunk digests, want %d", o.Key, len(g.Chunks), len(o.Chunks))
		}
	}
	again, err := Decode(bytes.NewReader(encode(t, ix)))
	if err != nil || !reflect.DeepEqual(collect(again), collect(ix)) {
		t.Fatalf("snapshot of base and segment: %v", err)
	}
}

// TestChunksWrongCount: chunk digests that cannot belong to the object are
// refused by the encoders and dropped by New.
func TestChunksWrongCount(t *testing.T) {
	bad := []Object{
		{Key: "a/small", Size: ChunkSize, Chunks: fakeChunks(2*ChunkSize, 1)},
		{Key: "a/big", Size: 3 * ChunkSize, Chunks: fakeChunks(2*ChunkSize, 1)},
	}
	for _, o := range bad {
		if err := EncodeSegment(new(bytes.Buffer), &Segment{Added: []Object{o}}); err == nil {
			t.Errorf("EncodeSegment took %d chunk digests for %d bytes", len(o.Chunks), o.Size)
		}
	}
	ix := New(bad, time.Time{})
	for o := range ix.Objects {
		if o.Chunks != nil {
			t.Errorf("New kept %d chunk digests for %d bytes", len(o.Chunks), o.Size)
		}
	}
}

func TestChunksDecodeCorrupt(t *testing.T) {
	big := Object{Key: "a/b", Size: 2*ChunkSize + 1, Chunks: fakeChunks(2*ChunkSize+1, 1)}
	good := encode(t, New([]Object{big, {Key: "a/c", Size: 1}}, time.Unix(1, 0)))
	setU64 := func(off int, v uint64) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint64(b[off:], v)
		return fixSum(b)
	}
	entry := func(key string, size uint64, k uint64, digests int) []byte {
		b := rawEntry(0, uint64(len(key)), key, size, 1)
		b = binary.AppendUvarint(b, 0) // access time
		b = binary.AppendUvarint(b, k)
		return append(b, make([]byte, 32*digests)...)
	}
	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"absurd digest count", "absurd chunk digest count", setU64(48, maxChunkDigests+1)},
		{"header says fewer", "chunk digest count mismatch: header says 2", setU64(48, 2)},
		{"header says more", "chunk digest count mismatch: header says 4, entries have 3", setU64(48, 4)},
		{"digests of a small object", "entry 0: 1 chunk digests for 100 bytes, want 0 or 0", frame4(1, 1, entry("a", 100, 1, 1))},
		{"too few digests", fmt.Sprintf("entry 0: 2 chunk digests for %d bytes, want 0 or 4", 3*ChunkSize+1), frame4(1, 2, entry("a", 3*ChunkSize+1, 2, 2))},
		{"cut in digests", "entry 0: truncated body in chunk digest", frame4(1, 4, entry("a", 3*ChunkSize+1, 4, 3))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(bytes.NewReader(tc.in))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want ErrCorrupt saying %q", err, tc.want)
			}
		})
	}
	// Segments: a Chunked record of the wrong count, or in a version 2 segment.
	chunked := func(size, k uint64) []byte {
		b := rawAdded("a", size, 0)
		b[0] = recChunked
		b = binary.AppendUvarint(b, k)
		return append(b, make([]byte, 32*k)...)
	}
	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"wrong count", fmt.Sprintf("record 0: 2 chunk digests for %d bytes, want 4", 3*ChunkSize+1), segFrame(1, chunked(3*ChunkSize+1, 2))},
		{"small object", "record 0: 1 chunk digests for 5 bytes, want 0", segFrame(1, chunked(5, 1))},
		{"in version 2", "record 0: unknown record kind 4 in a version 2 segment", segFrameV(2, 1, chunked(3*ChunkSize+1, 4))},
		{"cut", "record 0: truncated body in chunk digest", segFrame(1, chunked(3*ChunkSize+1, 4)[:60])},
	} {
		t.Run("segment "+tc.name, func(t *testing.T) {
			_, err := DecodeSegment(bytes.NewReader(tc.in))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want ErrCorrupt saying %q", err, tc.want)
			}
		})
	}
}

// frame4 builds a version 4 snapshot (no covered segments, no
// equivalences) around raw entries.
func frame4(count, digests uint64, raw []byte) []byte {
	raw = append(bytes.Clone(raw), 0) // an empty string table
	body := testEncoder.EncodeAll(raw, nil)
	hdr := make([]byte, headerLenV4)
	copy(hdr, magic)
	binary.LittleEndian.PutUint32(hdr[8:], 4)
	binary.LittleEndian.PutUint64(hdr[24:], count)
	binary.LittleEndian.PutUint64(hdr[48:], digests)
	binary.LittleEndian.PutUint64(hdr[56:], uint64(len(body)))
	var buf bytes.Buffer
	writeFrame(&buf, hdr, body)
	return buf.Bytes()
}

// goldenV4Index is what testdata/snapshot-v4.bin holds: written by the
// version 4 encoder, the first with chunk digests.
func goldenV4Index(t testing.TB) *Index {
	ix := New(chunkedObjects(t, realisticKeys(t)[80:110], 79), time.Unix(1_750_000_300, 7))
	ix.covered = testSegKeys(2)
	return withEqs(ix, testEq(3, "do_a"))
}

// goldenSegV3 is what testdata/segment-v3.bin holds: written by the
// version 3 encoder, the first with chunk digests.
func goldenSegV3(t testing.TB) *Segment {
	return &Segment{Time: time.Unix(1_750_000_400, 11), Added: chunkedObjects(t, realisticKeys(t)[110:116], 81),
		Accessed: []Access{{Key: "a/b", Time: time.Unix(1_750_000_401, 0)}}, Reported: []Equivalence{testEq(4, "do_b")}}
}

// TestWriteGoldenChunks writes the version 4 and version 3 testdata files
// when SSTATEFS_WRITE_GOLDEN is set (once, when the formats were made).
func TestWriteGoldenChunks(t *testing.T) {
	if os.Getenv("SSTATEFS_WRITE_GOLDEN") == "" {
		t.Skip("set SSTATEFS_WRITE_GOLDEN=1 to write testdata/snapshot-v4.bin and segment-v3.bin")
	}
	os.WriteFile("testdata/snapshot-v4.bin", encode(t, goldenV4Index(t)), 0o644)
	os.WriteFile("testdata/segment-v3.bin", encodeSeg(t, goldenSegV3(t)), 0o644)
}

func TestDecodeV4(t *testing.T) {
	b := readGolden(t, "testdata/snapshot-v4.bin", 4)
	got, err := Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	want := goldenV4Index(t)
	if !reflect.DeepEqual(collect(got), collect(want)) || !reflect.DeepEqual(eqDump(got), eqDump(want)) ||
		len(got.Covered()) != 3 || got.numChunkDigests() == 0 {
		t.Fatal("version 4 snapshot decodes differently")
	}
	if again := encode(t, got); !bytes.Equal(again, b) {
		t.Error("the encoder no longer writes version 4 as it did")
	}
}

func TestDecodeSegmentV3(t *testing.T) {
	b := readGolden(t, "testdata/segment-v3.bin", 3)
	got, err := DecodeSegment(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	want := goldenSegV3(t)
	if len(got.Added) != len(want.Added) || len(got.Reported) != 1 || len(got.Accessed) != 1 {
		t.Fatalf("decoded %d objects, %d equivalences", len(got.Added), len(got.Reported))
	}
	for i, o := range want.Added {
		g := got.Added[i]
		if g.Key != o.Key || g.Size != o.Size || g.SHA256 != o.SHA256 || !reflect.DeepEqual(g.Chunks, o.Chunks) {
			t.Errorf("added %d differs", i)
		}
	}
	if again := encodeSeg(t, got); !bytes.Equal(again, b) {
		t.Error("the encoder no longer writes version 3 as it did")
	}
}

// TestBuildRecordsChunks: `index build` records the chunk digests of large
// objects (in the pass that computes their digest), saved and loaded back;
// an object a previous index (of an older sstatefs) has without them is
// read again.
func TestBuildRecordsChunks(t *testing.T) {
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 2*ChunkSize+12345)
	crand.Read(big)
	small := []byte("small")
	writeFile(t, s, "ab/cd/big", big)
	writeFile(t, s, "ab/cd/small", small)
	ctx := context.Background()
	check := func(ix *Index, what string) {
		t.Helper()
		o, ok := ix.Lookup("ab/cd/big")
		if !ok || o.SHA256 != sha256.Sum256(big) || !reflect.DeepEqual(o.Chunks, chunkSums(big)) {
			t.Fatalf("%s: big object with %d chunk digests, want the %d of its content", what, len(o.Chunks), NumChunks(int64(len(big))))
		}
		if o, _ := ix.Lookup("ab/cd/small"); o.Chunks != nil {
			t.Fatalf("%s: a small object has chunk digests", what)
		}
	}
	ix, err := Build(ctx, s, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	check(ix, "built")
	if err := Save(ctx, s, ix); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	check(loaded, "saved and loaded")

	// A previous index without chunk digests: the big object is read again.
	var old []Object
	for o := range ix.Objects {
		o.Chunks = nil
		old = append(old, o)
	}
	again, err := Build(ctx, s, BuildOptions{Previous: New(old, time.Now())})
	if err != nil {
		t.Fatal(err)
	}
	check(again, "built on a previous index without chunk digests")
}

// TestJournalChunks: the journal writes chunk digests into its segment and
// a reader loads them; a record whose digests do not fit its size is
// refused (alone: Added checks it, so that it cannot fail a batch).
func TestJournalChunks(t *testing.T) {
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	j := NewJournal(s, JournalOptions{Writer: "t"})
	ctx := context.Background()
	if err := j.Added(ctx, Object{Key: "a/b", Size: 3 * ChunkSize, Chunks: fakeChunks(ChunkSize+1, 1)}); err == nil {
		t.Fatal("Added took 2 chunk digests for a 24 MiB object")
	}
	big := Object{Key: "a/c", Size: 3 * ChunkSize, Chunks: fakeChunks(3*ChunkSize, 1)}
	if err := j.Added(ctx, big); err != nil {
		t.Fatal(err)
	}
	ix, err := LoadAll(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := ix.Lookup("a/c"); !ok || !reflect.DeepEqual(o.Chunks, big.Chunks) {
		t.Fatalf("journal record with %d chunk digests, want 3", len(o.Chunks))
	}
}

// TestChunksHugeObjectSegment: a segment of one object with many chunk
// digests (a 100 GiB object: 400 KB of them) is read back.
func TestChunksHugeObjectSegment(t *testing.T) {
	o := Object{Key: "a/huge", Size: 100 << 30}
	o.Chunks = fakeChunks(o.Size, 9)
	got, err := DecodeSegment(bytes.NewReader(encodeSeg(t, &Segment{Time: time.Unix(1, 0), Added: []Object{o}})))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Added) != 1 || !reflect.DeepEqual(got.Added[0].Chunks, o.Chunks) {
		t.Fatal("chunk digests of a huge object lost")
	}
}
