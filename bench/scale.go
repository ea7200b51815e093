package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"time"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/sstate"
)

// indexScale measures the index package at the size of a big shared store:
// n synthetic entries (objects and their .siginfo, named like the real
// ones), encoded as a snapshot, then decoded as a mount loads it.
type indexScale struct {
	n     int
	names []string
	seed  uint64
}

func (w *indexScale) Rows() []Row {
	return []Row{
		{ID: "index-load", Title: fmt.Sprintf("index: load %s objects", thousands(w.n)), Unit: "s"},
		{ID: "index-mem", Title: "index: heap per object", Unit: "B"},
		{ID: "index-lookup", Title: "index: lookup", Unit: "ns"},
	}
}

// keyTemplate is a real name cut around its hash.
type keyTemplate struct{ prefix, head, tail string }

func templates(names []string) ([]keyTemplate, error) {
	out := make([]keyTemplate, 0, len(names))
	for _, name := range names {
		n, err := sstate.Parse(name)
		if err != nil {
			return nil, err
		}
		base := name[strings.LastIndexByte(name, '/')+1:]
		i := strings.Index(base, n.Hash)
		t := keyTemplate{head: base[:i], tail: base[i+len(n.Hash):]}
		if n.Native != "" {
			t.prefix = n.Native + "/"
		}
		out = append(out, t)
	}
	return out, nil
}

// synthIndexObjects makes n index entries: objects with new random hashes
// and their .siginfo.
func synthIndexObjects(names []string, n int, seed uint64) ([]index.Object, error) {
	tmpl, err := templates(names)
	if err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(seed, 0x1de))
	const hexdig = "0123456789abcdef"
	objs := make([]index.Object, 0, n)
	base := time.Unix(1_750_000_000, 0)
	var h [64]byte
	for len(objs) < n {
		t := tmpl[r.IntN(len(tmpl))]
		for i := range h {
			h[i] = hexdig[r.IntN(16)]
		}
		key := t.prefix + string(h[0:2]) + "/" + string(h[2:4]) + "/" + t.head + string(h[:]) + t.tail
		for _, k := range []string{key, key + ".siginfo"} {
			if len(objs) == n {
				break
			}
			o := index.Object{Key: k, Size: logUniform(r, 128, 64<<20), ModTime: base.Add(time.Duration(r.Int64N(1e16)))}
			for j := range o.SHA256 {
				o.SHA256[j] = byte(r.Uint32())
			}
			objs = append(objs, o)
		}
	}
	return objs, nil
}

// encodeSynth returns the snapshot of n synthetic objects. Nothing it
// allocates outlives it but the snapshot, so the heap measured after it
// holds no leftovers.
func encodeSynth(names []string, n int, seed uint64) ([]byte, error) {
	objs, err := synthIndexObjects(names, n, seed)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := index.Encode(&buf, index.New(objs, time.Now())); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Run encodes a snapshot and measures its decode (what a mount does at
// start and on each refresh), the heap the decoded index keeps, and the
// mean time of a Lookup.
func (w *indexScale) Run() []Measurement {
	fail := func(err error) []Measurement { return []Measurement{failed(err), failed(err), failed(err)} }
	data, err := encodeSynth(w.names, w.n, w.seed)
	if err != nil {
		return fail(err)
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	ix, err := index.Decode(bytes.NewReader(data))
	load := time.Since(start)
	if err != nil {
		return fail(err)
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	// Only len(data) is used below: without this the snapshot would be
	// freed in between and its bytes subtracted from the index's.
	runtime.KeepAlive(data)
	if ix.Len() != w.n {
		return fail(fmt.Errorf("decoded index has %d objects, want %d", ix.Len(), w.n))
	}
	perObject := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(ix.Len())

	// Every key (a hit) and its .sig (a miss), in random order.
	probes := make([]string, 0, 2*ix.Len())
	for o := range ix.Objects {
		probes = append(probes, o.Key, o.Key+".sig")
	}
	r := rand.New(rand.NewPCG(w.seed, 0x100c))
	r.Shuffle(len(probes), func(i, j int) { probes[i], probes[j] = probes[j], probes[i] })
	hits := 0
	start = time.Now()
	for _, k := range probes {
		if _, ok := ix.Lookup(k); ok {
			hits++
		}
	}
	lookup := time.Since(start)
	if hits != w.n {
		return fail(fmt.Errorf("%d lookups of the index's own keys found %d", w.n, hits))
	}
	return []Measurement{
		{Value: load.Seconds(), Note: fmt.Sprintf("snapshot %s", formatBytes(int64(len(data))))},
		{Value: perObject},
		{Value: float64(lookup.Nanoseconds()) / float64(len(probes))},
	}
}
