package index

import (
	"bytes"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The scale test and BenchmarkLookup1M measure the index at the size the
// design targets: 1,000,000 objects (packages and their .siginfo, named
// like a real build's with random unihashes, about 38% native) must load
// in under 2 s and keep under 150 bytes of heap each.
//
// They are opt-in, as building the input takes a while:
//
//	SSTATEFS_INDEX_SCALE=1 go test -run TestScaleMillion -v ./index/
//	SSTATEFS_INDEX_SCALE=1 go test -run '^$' -bench Lookup1M ./index/
//
// SSTATEFS_INDEX_SCALE may also give the object count (e.g. 2000000), and
// SSTATEFS_INDEX_NAMES a file of template names (one a line), e.g. the whole
// compat/core-image-minimal-sstate-names.txt instead of the sample in
// testdata.

const (
	scaleTargetLoad = 2 * time.Second
	scaleTargetHeap = 150 // bytes per object
)

// scaleCount returns the object count of the scale test, or skips.
func scaleCount(t testing.TB) int {
	v := os.Getenv("SSTATEFS_INDEX_SCALE")
	if v == "" {
		t.Skip("set SSTATEFS_INDEX_SCALE=1 (or an object count) to run the 1,000,000-object scale test")
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 1 {
		n = 1_000_000
	}
	return n
}

// scaleNames returns the template names: SSTATEFS_INDEX_NAMES, else the
// sample in testdata.
func scaleNames(t testing.TB) []string {
	path := os.Getenv("SSTATEFS_INDEX_NAMES")
	if path == "" {
		return names(t)
	}
	return readNames(t, path)
}

// scaleObjects returns n objects named like tmpl (each package followed by
// its .siginfo) with random unihashes, sizes, times to the nanosecond and
// digests, in random order. One object in 20 is a large package of 8 to 24
// MiB with its chunk digests; the others are under 256 KiB: a store that
// averages about 1 MiB an object, as a core-image-minimal store does, with
// most of its bytes in its largest packages.
func scaleObjects(tmpl []string, n int, seed uint64) []Object {
	r := rand.New(rand.NewPCG(seed, 0x5ca1e))
	seen := make(map[string]struct{}, n)
	objs := make([]Object, 0, n)
	for len(objs) < n {
		key := synthKey(r, tmpl)
		for _, k := range []string{key, key + ".siginfo"} {
			if _, dup := seen[k]; dup || len(objs) == n {
				continue
			}
			seen[k] = struct{}{}
			o := randomObject(r, k)
			if len(objs)%20 == 0 {
				o.Size = 8<<20 + 1 + r.Int64N(16<<20)
				o.Chunks = make([][32]byte, NumChunks(o.Size))
				for c := range o.Chunks {
					o.Chunks[c][0], o.Chunks[c][1] = byte(r.Uint32()), byte(c)
				}
			} else {
				o.Size = r.Int64N(256 << 10)
			}
			objs = append(objs, o)
		}
	}
	return objs
}

// scaleInput is the encoded snapshot of the scale test and some of its
// keys, made once per process.
type scaleInput struct {
	data       []byte
	hits, miss []string
	native     float64
}

var (
	scaleOnce sync.Once
	scaleIn   *scaleInput
)

func scaleSnapshot(t testing.TB, n int) *scaleInput {
	scaleOnce.Do(func() {
		objs := scaleObjects(scaleNames(t), n, 1)
		in := &scaleInput{}
		r := rand.New(rand.NewPCG(2, 2))
		native := 0
		for _, o := range objs {
			if !strings.HasPrefix(o.Key[2:], "/") {
				native++
			}
		}
		in.native = float64(native) / float64(len(objs))
		for range 200_000 {
			// A copy, as a name the kernel passes in is not the
			// index's own string.
			k := strings.Clone(objs[r.IntN(len(objs))].Key)
			in.hits = append(in.hits, k)
			// The checks bitbake makes for names it does not find:
			// signatures, and objects of other hashes.
			if r.IntN(2) == 0 {
				in.miss = append(in.miss, k+".sig")
			} else {
				c := strings.LastIndexByte(k, ':')
				h := k[c+1 : c+65]
				hn := randomHash(r)
				m := strings.Replace(k, h[0:2]+"/"+h[2:4]+"/", hn[0:2]+"/"+hn[2:4]+"/", 1)
				in.miss = append(in.miss, strings.Replace(m, h, hn, 1))
			}
		}
		var buf bytes.Buffer
		if err := Encode(&buf, New(objs, time.Unix(1_750_000_000, 0))); err != nil {
			t.Fatal(err)
		}
		in.data = buf.Bytes()
		scaleIn = in
	})
	if scaleIn == nil {
		t.Fatal("no scale input")
	}
	return scaleIn
}

// TestScaleMillion decodes a 1,000,000-object snapshot and reports (and
// checks against the design's targets) the load time, the heap the index
// keeps per object, and the latency of Lookup.
func TestScaleMillion(t *testing.T) {
	n := scaleCount(t)
	start := time.Now()
	in := scaleSnapshot(t, n)
	t.Logf("input: %d objects (%.1f%% native), snapshot %.1f MB, made in %v",
		n, 100*in.native, float64(len(in.data))/1e6, time.Since(start).Round(time.Millisecond))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	var load time.Duration
	var ix *Index
	for i := range 3 { // the best of three, like a benchmark
		ix = nil
		runtime.GC()
		start := time.Now()
		got, err := Decode(bytes.NewReader(in.data))
		d := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 || d < load {
			load = d
		}
		ix = got
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(ix.Len())
	if ix.Len() != n {
		t.Fatalf("decoded %d objects, want %d", ix.Len(), n)
	}
	t.Logf("load (Decode): %v (best of 3; target %v)", load.Round(time.Millisecond), scaleTargetLoad)
	t.Logf("heap: %.1f bytes/object after Decode (target %d)", heap, scaleTargetHeap)

	for _, c := range []struct {
		name string
		keys []string
		want bool
	}{{"hit", in.hits, true}, {"miss", in.miss, false}} {
		med, p99, mean := lookupLatency(t, ix, c.keys, c.want)
		t.Logf("Lookup %s: median %v, p99 %v, mean %v", c.name, med, p99, mean)
	}
	start = time.Now()
	m := 0
	for range ix.Objects {
		m++
	}
	t.Logf("Objects: %v for %d", time.Since(start).Round(time.Millisecond), m)
	runtime.KeepAlive(ix)

	if heap >= scaleTargetHeap {
		t.Errorf("heap %.1f bytes/object, target under %d", heap, scaleTargetHeap)
	}
	if load >= scaleTargetLoad {
		t.Errorf("load %v, target under %v", load, scaleTargetLoad)
	}
}

// lookupLatency times Lookup of keys in batches of 32 and returns the
// median and 99th percentile of the per-lookup time of a batch, and the
// mean.
func lookupLatency(t *testing.T, ix *Index, keys []string, want bool) (med, p99, mean time.Duration) {
	const batch = 32
	var per []time.Duration
	var total time.Duration
	for i := 0; i+batch <= len(keys); i += batch {
		start := time.Now()
		ok := true
		for _, k := range keys[i : i+batch] {
			_, found := ix.Lookup(k)
			ok = ok && found == want
		}
		d := time.Since(start)
		if !ok {
			t.Fatalf("Lookup in batch %d: found != %v", i/batch, want)
		}
		total += d
		per = append(per, d/batch)
	}
	slices.Sort(per)
	return per[len(per)/2], per[len(per)*99/100], total / time.Duration(len(per)*batch)
}

// BenchmarkLookup1M is BenchmarkLookup on the 1,000,000-object index of
// TestScaleMillion, decoded from its snapshot.
func BenchmarkLookup1M(b *testing.B) {
	n := scaleCount(b)
	in := scaleSnapshot(b, n)
	ix, err := Decode(bytes.NewReader(in.data))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		keys []string
		want bool
	}{{"hit", in.hits, true}, {"miss", in.miss, false}} {
		b.Run(c.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				if _, ok := ix.Lookup(c.keys[i%len(c.keys)]); ok != c.want {
					b.Fatalf("Lookup(%q) = %v", c.keys[i%len(c.keys)], ok)
				}
				i++
			}
		})
	}
	b.Run("IsDir", func(b *testing.B) {
		i := 0
		for b.Loop() {
			k := in.hits[i%len(in.hits)]
			ix.IsDir(k[:strings.LastIndexByte(k, '/')])
			i++
		}
	})
	b.Run("Children", func(b *testing.B) {
		i := 0
		for b.Loop() {
			k := in.hits[i%len(in.hits)]
			ix.Children(k[:strings.LastIndexByte(k, '/')])
			i++
		}
	})
}

// BenchmarkDecode1M decodes the snapshot of TestScaleMillion.
func BenchmarkDecode1M(b *testing.B) {
	n := scaleCount(b)
	in := scaleSnapshot(b, n)
	b.SetBytes(int64(len(in.data)))
	for b.Loop() {
		if _, err := Decode(bytes.NewReader(in.data)); err != nil {
			b.Fatal(err)
		}
	}
}
