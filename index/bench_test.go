package index

import (
	"bytes"
	"runtime"
	"testing"
	"time"
)

func benchIndex(b *testing.B, n int) (*Index, []string) {
	b.Helper()
	keys := synthKeys(b, n, 42)
	return New(randomObjects(keys, 42), time.Now()), keys
}

func BenchmarkLookup(b *testing.B) {
	ix, keys := benchIndex(b, 100_000)
	misses := make([]string, len(keys))
	for i, k := range keys {
		misses[i] = k + ".sig" // the check bitbake makes for every object
	}
	b.Run("hit", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := ix.Lookup(keys[i%len(keys)]); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("miss", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := ix.Lookup(misses[i%len(misses)]); ok {
				b.Fatal("hit")
			}
			i++
		}
	})
	b.Run("IsDir", func(b *testing.B) {
		for b.Loop() {
			ix.IsDir("debian-12/ab/cd")
		}
	})
	b.Run("Children", func(b *testing.B) {
		for b.Loop() {
			ix.Children("ab")
		}
	})
}

// BenchmarkDecode100k decodes a realistic 100,000-object snapshot and
// reports the heap the decoded index keeps per object.
func BenchmarkDecode100k(b *testing.B) {
	const n = 100_000
	ix, _ := benchIndex(b, n)
	benchDecode(b, encode(b, ix), n, "obj")
	runtime.KeepAlive(ix)
}

// benchDecode decodes data in the benchmark loop, then reports the heap
// one decoded index keeps and the size of data, in bytes per each of the
// n items it holds ("heapB/"+unit and "fileB/"+unit).
func benchDecode(b *testing.B, data []byte, n int, unit string) {
	b.Helper()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	heap, got := heapOf(func() *Index {
		got, _ := Decode(bytes.NewReader(data))
		return got
	})
	b.ReportMetric(heap/float64(n), "heapB/"+unit)
	b.ReportMetric(float64(len(data))/float64(n), "fileB/"+unit)
	runtime.KeepAlive(got)
	runtime.KeepAlive(data) // not the index's memory: the input's
}

func BenchmarkEncode100k(b *testing.B) {
	ix, _ := benchIndex(b, 100_000)
	b.ReportAllocs()
	for b.Loop() {
		var buf bytes.Buffer
		if err := Encode(&buf, ix); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecode100kAccessed is BenchmarkDecode100k with an access time on
// every object (version 2): four more bytes of heap per object.
func BenchmarkDecode100kAccessed(b *testing.B) {
	const n = 100_000
	objs := randomObjects(synthKeys(b, n, 42), 42)
	for i := range objs {
		objs[i].Accessed = time.Unix(1_750_000_000+int64(i), 0)
	}
	var buf bytes.Buffer
	if err := Encode(&buf, New(objs, time.Now())); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data))/n, "fileB/obj")
}

// BenchmarkApply applies a typical segment (a batch of published objects
// and access records) to a 100,000-object index: the cost of a refresh
// that finds new segments, and of Live.Apply.
func BenchmarkApply(b *testing.B) {
	ix, keys := benchIndex(b, 100_000)
	seg := &Segment{Key: segmentKey(1, "w"), Added: randomObjects(synthKeys(b, 50, 7), 7)}
	for i := range 200 {
		seg.Accessed = append(seg.Accessed, Access{Key: keys[i*97], Time: time.Unix(1_750_000_000, 0)})
	}
	b.ReportAllocs()
	for b.Loop() {
		apply(ix, []*Segment{seg})
	}
}

// BenchmarkDecodeSegment decodes a segment of 1,000 objects (a full batch).
func BenchmarkDecodeSegment(b *testing.B) {
	data, err := encodeSegment(&Segment{Time: time.Now(), Added: randomObjects(synthKeys(b, 1000, 3), 3)})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeSegment(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
