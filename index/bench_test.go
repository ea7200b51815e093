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
	var buf bytes.Buffer
	if err := Encode(&buf, ix); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var got *Index
	for b.Loop() {
		var err error
		if got, err = Decode(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	var before, after runtime.MemStats
	got = nil
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	got, _ = Decode(bytes.NewReader(data))
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heapB/obj")
	b.ReportMetric(float64(len(data))/n, "fileB/obj")
	runtime.KeepAlive(got)
	runtime.KeepAlive(data)
	runtime.KeepAlive(ix)
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
