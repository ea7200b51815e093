package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func encodeSeg(t testing.TB, seg *Segment) []byte {
	t.Helper()
	b, err := encodeSegment(seg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSegmentRoundTrip(t *testing.T) {
	var sha [32]byte
	for i := range sha {
		sha[i] = byte(3 * i)
	}
	for _, tc := range []struct {
		name string
		seg  Segment
	}{
		{"empty", Segment{Time: time.Unix(0, 0)}},
		{"added", Segment{Time: time.Unix(1_750_000_000, 42), Added: []Object{
			{Key: "ab/cd/x.tar.zst", Size: 10, ModTime: time.Unix(1_700_000_000, 5), SHA256: sha},
			{Key: "a", Size: 0},                // zero times and digest
			{Key: "ab/cd/x.tar.zst", Size: 11}, // a key twice: kept as recorded
			{Key: strings.Repeat("k", MaxKeyLen), Size: math.MaxInt64, Accessed: time.Unix(1<<32-1, 0)},
		}}},
		{"accessed", Segment{Time: time.Unix(1_750_000_000, 0), Accessed: []Access{
			{Key: "a/b", Time: time.Unix(1, 0)}, {Key: "c", Time: time.Unix(1_750_000_000, 0)},
		}}},
		{"realistic", Segment{Time: time.Unix(1_750_000_001, 0), Added: randomObjects(realisticKeys(t), 4),
			Accessed: []Access{{Key: realisticKeys(t)[3], Time: time.Unix(1_750_000_002, 0)}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeSeg(t, &tc.seg)
			got, err := DecodeSegment(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if !got.Time.Equal(tc.seg.Time) || len(got.Added) != len(tc.seg.Added) || len(got.Accessed) != len(tc.seg.Accessed) {
				t.Fatalf("got %v, %d added, %d accessed", got.Time, len(got.Added), len(got.Accessed))
			}
			for i, o := range tc.seg.Added {
				g := got.Added[i]
				if g.Key != o.Key || g.Size != o.Size || g.SHA256 != o.SHA256 || !g.ModTime.Equal(o.ModTime) ||
					g.ModTime.IsZero() != o.ModTime.IsZero() || !g.Accessed.Equal(o.Accessed) {
					t.Errorf("added %d: %+v, want %+v", i, g, o)
				}
			}
			for i, a := range tc.seg.Accessed {
				if g := got.Accessed[i]; g.Key != a.Key || !g.Time.Equal(a.Time) {
					t.Errorf("accessed %d: %+v, want %+v", i, g, a)
				}
			}
			if again := encodeSeg(t, got); !bytes.Equal(again, b) {
				t.Error("re-encoding differs")
			}
			for name, r := range map[string]*bytes.Reader{"one byte": bytes.NewReader(b), "half": bytes.NewReader(b)} {
				rd := iotest.OneByteReader(r)
				if name == "half" {
					rd = iotest.HalfReader(r)
				}
				if g, err := DecodeSegment(rd); err != nil || !reflect.DeepEqual(g, got) {
					t.Errorf("%s reader: %v", name, err)
				}
			}
		})
	}
}

func TestEncodeSegmentRejects(t *testing.T) {
	for name, seg := range map[string]Segment{
		"meta key":         {Added: []Object{{Key: SnapshotKey}}},
		"negative size":    {Added: []Object{{Key: "a", Size: -1}}},
		"bad key":          {Added: []Object{{Key: "/a"}}},
		"zero access time": {Accessed: []Access{{Key: "a"}}},
		"bad access key":   {Accessed: []Access{{Key: "a//b", Time: time.Now()}}},
	} {
		if _, err := encodeSegment(&seg); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

// segFrame frames a raw segment body, as a hostile or buggy writer could.
func segFrame(count uint64, raw []byte) []byte { return segFrameV(segmentVersion, count, raw) }

// segFrameV is segFrame with a version.
func segFrameV(version uint32, count uint64, raw []byte) []byte {
	body := testEncoder.EncodeAll(raw, nil)
	hdr := make([]byte, segHeaderLen)
	copy(hdr, segmentMagic)
	binary.LittleEndian.PutUint32(hdr[8:], version)
	binary.LittleEndian.PutUint64(hdr[20:], count)
	binary.LittleEndian.PutUint64(hdr[28:], uint64(len(body)))
	var buf bytes.Buffer
	writeFrame(&buf, hdr, body)
	return buf.Bytes()
}

func rawAdded(key string, size uint64, atime uint64) []byte {
	b := []byte{recAdded}
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	b = binary.AppendUvarint(b, size)
	b = binary.AppendVarint(b, 1)
	b = append(b, make([]byte, 32)...)
	return binary.AppendUvarint(b, atime)
}

func rawAccessed(key string, at uint64) []byte {
	b := []byte{recAccessed}
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return binary.AppendUvarint(b, at)
}

func TestDecodeSegmentCorrupt(t *testing.T) {
	good := encodeSeg(t, &Segment{Time: time.Unix(5, 0), Added: randomObjects(realisticKeys(t)[:10], 3),
		Accessed: []Access{{Key: "a", Time: time.Unix(9, 0)}}})
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	setU64 := func(off int, v uint64) []byte {
		return edit(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return fixSum(b) })
	}
	bodyLen := binary.LittleEndian.Uint64(good[28:])
	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"empty", "truncated: 0 bytes, shorter than the 36-byte header", nil},
		{"short header", "truncated: 30 bytes, shorter than the 36-byte header", good[:30]},
		{"snapshot", `bad magic "SSTFSIDX", want "SSTFSJNL" (not an sstatefs journal segment)`, encode(t, New(nil, time.Time{}))},
		{"version 5", "unsupported version 5 (this sstatefs reads versions up to 4)",
			edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 5); return fixSum(b) })},
		{"bit flip", "checksum mismatch (the journal segment is damaged)", edit(func(b []byte) []byte { b[segHeaderLen+3] ^= 4; return b })},
		{"cut", "truncated", good[:len(good)-5]},
		{"trailing data", "trailing data after the checksum", append(bytes.Clone(good), 1)},
		{"count too high", "record count mismatch: header says 12 records, body ends after 11", setU64(20, 12)},
		{"count too low", "record count mismatch: header says 10 records, body has more", setU64(20, 10)},
		{"absurd count", "absurd record count 1048577", setU64(20, maxSegmentRecords+1)},
		{"absurd body length", "absurd body length", setU64(28, 1<<40)},
		{"body length too long", "truncated", setU64(28, bodyLen+1)},
		{"unknown kind", "record 0: unknown record kind 6", segFrame(1, []byte{6, 1, 'a'})},
		{"signed in version 3", "record 0: unknown record kind 5 in a version 3 segment", segFrameV(3, 1, []byte{5, 1, 'a'})},
		{"reported in version 1", "record 1: unknown record kind 3 in a version 1 segment",
			segFrameV(1, 2, cat(rawAccessed("a", 1), rawReported(testEq(1, "m"))))},
		{"kind 0", "record 0: unknown record kind 0", segFrame(1, []byte{0})},
		{"bad key", `record 0: invalid key "a//b"`, segFrame(1, rawAdded("a//b", 1, 0))},
		{"meta key", `record 1: invalid key ".sstatefs/x"`, segFrame(2, cat(rawAdded("a", 1, 0), rawAccessed(".sstatefs/x", 1)))},
		{"empty key", `record 0: invalid key ""`, segFrame(1, rawAccessed("", 1))},
		{"absurd key length", "record 0: absurd key length 1099511627776", segFrame(1, cat([]byte{recAdded}, binary.AppendUvarint(nil, 1<<40)))},
		{"absurd size", "record 0: absurd size 9223372036854775808", segFrame(1, rawAdded("a", 1<<63, 0))},
		{"absurd access time", "record 0: absurd access time 4294967296", segFrame(1, rawAccessed("a", 1<<32))},
		{"access without time", "record 0: access record without a time", segFrame(1, rawAccessed("a", 0))},
		{"cut in key", "record 0: truncated body in key", segFrame(1, rawAdded("abcdef", 1, 0)[:4])},
		{"cut in digest", "record 0: truncated body in sha256", segFrame(1, rawAdded("a", 1, 0)[:20])},
		{"cut in access time", "record 0: truncated body in access time", segFrame(1, rawAccessed("a", 300)[:3])},
		{"varint overflow", "record 0: bad key length", segFrame(1, cat([]byte{recAdded}, bytes.Repeat([]byte{0xff}, 11)))},
		{"not zstd", "record 0: decompress body", func() []byte {
			hdr := make([]byte, segHeaderLen)
			copy(hdr, segmentMagic)
			binary.LittleEndian.PutUint32(hdr[8:], 1)
			binary.LittleEndian.PutUint64(hdr[20:], 1)
			body := []byte("not zstd, not at all")
			binary.LittleEndian.PutUint64(hdr[28:], uint64(len(body)))
			var buf bytes.Buffer
			writeFrame(&buf, hdr, body)
			return buf.Bytes()
		}()},
		{"body too large", "decompress body: body decompresses to more than 64 MiB", func() []byte {
			// Records with 4 KiB keys: a small stream that expands
			// beyond the limit.
			rec := cat([]byte{recAccessed}, binary.AppendUvarint(nil, MaxKeyLen),
				bytes.Repeat([]byte("k"), MaxKeyLen), []byte{1})
			return segFrame(17000, bytes.Repeat(rec, 17000))
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) { wantSegCorrupt(t, tc.in, tc.want) })
	}
	boom := errors.New("boom")
	if _, err := DecodeSegment(failingReader{boom}); !errors.Is(err, boom) || errors.Is(err, ErrCorrupt) {
		t.Errorf("reader error: %v", err)
	}
}

// wantSegCorrupt checks that DecodeSegment refuses in with ErrCorrupt
// saying want.
func wantSegCorrupt(t *testing.T, in []byte, want string) {
	t.Helper()
	seg, err := DecodeSegment(bytes.NewReader(in))
	if err == nil {
		t.Fatalf("decoded %+v, want error %q", seg, want)
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
		t.Errorf("error %q, want ErrCorrupt saying %q", err, want)
	}
}

func FuzzDecodeSegment(f *testing.F) {
	f.Add([]byte{})
	f.Add(encodeSeg(f, &Segment{}))
	f.Add(encodeSeg(f, &Segment{Time: time.Unix(1, 0), Added: randomObjects(realisticKeys(f)[:5], 1),
		Accessed: []Access{{Key: "a/b", Time: time.Unix(7, 0)}}}))
	f.Add(segFrame(2, cat(rawAdded("a", 1, 0), rawAccessed("b", 1))))
	f.Add(encodeSeg(f, &Segment{Time: time.Unix(2, 0), Added: randomObjects(realisticKeys(f)[:2], 1),
		Reported: []Equivalence{testEq(1, "do_a"), {Method: "m", Taskhash: "abcde", Unihash: "0123"}}}))
	bad := testEq(2, "do_a")
	bad.PN = "a\nb"
	f.Add(segFrame(3, cat(rawReported(testEq(1, "do_a")), rawReported(bad), rawAccessed("b", 1))))
	if v1, err := os.ReadFile("testdata/segment-v1.bin"); err == nil {
		f.Add(v1)
	}
	if v3, err := os.ReadFile("testdata/segment-v3.bin"); err == nil {
		f.Add(v3)
	}
	f.Add(encodeSeg(f, &Segment{Time: time.Unix(3, 0), Added: chunkedObjects(f, realisticKeys(f)[:4], 2)}))
	if v4, err := os.ReadFile("testdata/segment-v4.bin"); err == nil {
		f.Add(v4)
	}
	f.Add(encodeSeg(f, &Segment{Time: time.Unix(4, 0), Signed: []Signoff{signoffOf(testObject(1), 1, "s")}}))
	fp := bytes.Repeat([]byte{0xcd}, 32)
	f.Add(segFrame(3, cat(rawSigned("a/b", testObject(2).SHA256, fp, -1, []byte("sig")),
		rawSigned("a/b", testObject(2).SHA256, fp[:7], 1, []byte("x")), rawAccessed("b", 1))))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecodeSegment(t, data)
		checkDecodeSegment(t, fixSum(bytes.Clone(data)))
		if len(data) > 0 {
			checkDecodeSegment(t, segFrame(uint64(data[0]%8), data[1:]))
		}
	})
}

// checkDecodeSegment decodes data; what it accepts must encode again to a
// segment that decodes the same, what it rejects must say it is corrupt.
func checkDecodeSegment(t *testing.T, data []byte) {
	seg, err := DecodeSegment(bytes.NewReader(data))
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error does not wrap ErrCorrupt: %v", err)
		}
		return
	}
	for _, o := range seg.Added {
		if !validKey(o.Key) || o.Size < 0 || !validChunks(o.Size, o.Chunks) {
			t.Fatalf("accepted bad object %+v", o)
		}
	}
	for _, e := range seg.Reported {
		if err := e.Validate(); err != nil {
			t.Fatalf("accepted an invalid equivalence: %v", err)
		}
	}
	for _, g := range seg.Signed {
		if err := g.Validate(); err != nil {
			t.Fatalf("accepted an invalid sign-off: %v", err)
		}
	}
	again, err := DecodeSegment(bytes.NewReader(encodeSeg(t, seg)))
	if err != nil {
		t.Fatalf("re-encoded segment does not decode: %v", err)
	}
	seg.Invalid = 0 // dropped: not written again
	if !reflect.DeepEqual(again, seg) {
		t.Fatalf("round trip differs: %+v vs %+v", again, seg)
	}
}

func TestSegmentKeys(t *testing.T) {
	for in, want := range map[string]string{
		"build-host-3":                 "build-host-3",
		"Build_Host.example.COM":       "build-host-example-com",
		"--a--b--":                     "a-b",
		"ümlaut":                       "mlaut",
		"":                             "",
		"___":                          "",
		strings.Repeat("x", 100):       strings.Repeat("x", 63),
		strings.Repeat("a", 62) + "-b": strings.Repeat("a", 62),
	} {
		if got := SanitizeWriter(in); got != want {
			t.Errorf("SanitizeWriter(%q) = %q, want %q", in, got, want)
		}
	}
	if w := defaultWriter(""); w == "" || SanitizeWriter(w) != w {
		t.Errorf("defaultWriter = %q", w)
	}

	k := segmentKey(1_750_000_000_123_456_789, "host-a")
	n, ok := parseSegmentKey(k)
	if !ok || n.time != 1_750_000_000_123_456_789 || n.writer != "host-a" {
		t.Fatalf("parse %q = %+v, %v", k, n, ok)
	}
	if !strings.HasPrefix(k, JournalPrefix+"01750000000123456789-host-a-") || len(k) != len(JournalPrefix)+20+1+6+1+16+4 {
		t.Errorf("key %q", k)
	}
	if k2 := segmentKey(1_750_000_000_123_456_789, "host-a"); k2 == k {
		t.Error("two keys of one writer and time are equal")
	}
	// Fixed width: key order is time order, across writers.
	if a, b := segmentKey(999, "zzz"), segmentKey(1000, "aaa"); a >= b {
		t.Errorf("%q sorts after %q", a, b)
	}
	p := JournalPrefix
	for _, bad := range []string{
		"", p, p + "x.seg", "other/" + strings.TrimPrefix(k, p),
		p + "0175000000012345678-host-a-0123456789abcdef.seg",                           // 19 digits
		p + "01750000000123456789-host-a-0123456789abcdef.sig",                          // suffix
		p + "01750000000123456789-host-a-0123456789abcdeF.seg",                          // upper-case hex
		p + "01750000000123456789-host-a-0123456789abcde.seg",                           // short random
		p + "01750000000123456789--0123456789abcdef.seg",                                // no writer
		p + "01750000000123456789-Host-0123456789abcdef.seg",                            // upper-case writer
		p + "01750000000123456789-a/b-0123456789abcdef.seg",                             // slash
		p + "99999999999999999999-host-0123456789abcdef.seg",                            // beyond int64
		p + "0175000000012345678x-host-0123456789abcdef.seg",                            // not a digit
		p + "01750000000123456789_host-0123456789abcdef.seg",                            // separator
		p + "01750000000123456789-" + strings.Repeat("w", 64) + "-0123456789abcdef.seg", // long writer
	} {
		if _, ok := parseSegmentKey(bad); ok {
			t.Errorf("parseSegmentKey(%q) accepted", bad)
		}
	}
}
