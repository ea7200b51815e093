package index

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// refSplit is splitName written plainly: the reference the fast one must
// agree with.
func refSplit(key string) (prefix, head, digits, tail string, ok bool) {
	slash := strings.LastIndexByte(key, '/')
	if slash < 5 {
		return
	}
	base := key[slash+1:]
	c := strings.LastIndexByte(base, ':')
	if c < 0 || len(base)-c-1 < hashDigits {
		return
	}
	digits = base[c+1 : c+1+hashDigits]
	for _, ch := range []byte(digits) {
		if !('0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'f') {
			return
		}
	}
	if key[slash-5:slash+1] != digits[0:2]+"/"+digits[2:4]+"/" {
		return
	}
	prefix = key[:slash-5]
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		return
	}
	return prefix, base[:c+1], digits, base[c+1+hashDigits:], true
}

// checkSplit checks splitName of key, as a string and as bytes, against
// refSplit, and that the parts join to the key.
func checkSplit(t *testing.T, key string) bool {
	t.Helper()
	pe, at, hash, ok := splitName(key)
	bpe, bat, bhash, bok := splitName([]byte(key))
	if pe != bpe || at != bat || hash != bhash || ok != bok {
		t.Fatalf("splitName(%q): string and []byte disagree", key)
	}
	prefix, head, digits, tail, want := refSplit(key)
	if ok != want {
		t.Fatalf("splitName(%q) ok = %v, want %v", key, ok, want)
	}
	if !ok {
		return false
	}
	if key[:pe] != prefix || key[pe+6:at] != head || hex.EncodeToString(hash[:]) != digits || key[at+hashDigits:] != tail {
		t.Fatalf("splitName(%q) = %q %q %x %q, want %q %q %s %q",
			key, key[:pe], key[pe+6:at], hash, key[at+hashDigits:], prefix, head, digits, tail)
	}
	if joined := prefix + digits[0:2] + "/" + digits[2:4] + "/" + head + digits + tail; joined != key {
		t.Fatalf("parts of %q join to %q", key, joined)
	}
	return true
}

const testHash = "abcd0123456789abcdef0123456789abcdef0123456789abcdef0123456789ef"

// oddKeys are keys around the edges of the sstate name grammar: sstate
// names a packed run holds by template and keys it keeps verbatim.
func oddKeys() []string {
	h := testHash
	d := "ab/cd/"
	up := strings.ToUpper(h[:1]) + h[1:]
	return []string{
		d + "sstate:zlib:x86_64-linux:1.3:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst",
		d + "sstate:zlib:x86_64-linux:1.3:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst.siginfo",
		"debian-12/" + d + "sstate:zlib-native:x86_64-linux:1.3:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst",
		"universal/" + d + "sstate:zlib-native:x86_64-linux:1.3:r0:x86_64:14:" + h + "_populate_sysroot.tar.zst",
		"a/b/c/" + d + "sstate:deep:::::14:" + h + "_fetch.tar.zst", // prefix of three levels
		"ab/" + d + "sstate:x:" + h + "_t",  // a prefix that looks like a directory
		d + ":" + h,                         // the least head, no tail
		d + "x:" + h + "0",                  // 65 digits: the last is tail
		d + "x:" + h + "_t:u",               // a ':' in the tail
		d + "x:" + h[:63],                   // too short
		d + "x:" + up + "_t",                // upper case
		"ab/ce/x:" + h + "_t",               // directories of another hash
		"abc/cd/x:" + h + "_t",              // a directory too long
		"xab/cd/x:" + h + "_t",              // prefix without a slash
		d + "x" + h + "_t",                  // no ':' in the base name
		"a:b/" + d + "sstate:y:" + h + "_t", // a ':' in the prefix
		"a:" + h + "/" + d + "y_t",          // the last ':' before the base name
		d + "x:" + h + "_t\x80\xff.tar.zst", // bytes above 0x7f
		d + "x\x80:" + h + "_t",
		d + "x:" + h[:10] + "\xe6" + h[11:] + "_t",
		"ab/cd", "ab/cd/x", "a", "zz/empty", "ab/cd/sstate:x::1:r0::14:ab_fetch.tar.zst",
		"sstate-cache-management.log", d + "x:" + h + "/" + "y",
	}
}

func TestSplitName(t *testing.T) {
	named := 0
	for _, k := range oddKeys() {
		if checkSplit(t, k) {
			named++
		}
	}
	if named != 11 {
		t.Errorf("%d of the odd keys are sstate names, want 11", named)
	}
	for _, k := range realisticKeys(t) {
		if !checkSplit(t, k) {
			t.Errorf("real name %q is not split", k)
		}
	}
	// Lengths around the eight bytes lastByte tests at once.
	for n := range 20 {
		for _, k := range []string{strings.Repeat("x", n), strings.Repeat(":", n), strings.Repeat("/", n),
			"ab/cd/" + strings.Repeat("y", n) + ":" + testHash + strings.Repeat("z", n)} {
			checkSplit(t, k)
		}
	}
}

func FuzzSplitName(f *testing.F) {
	for _, k := range oddKeys() {
		f.Add(k)
	}
	for _, k := range realisticKeys(f)[:20] {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if !checkSplit(t, key) || !validKey(key) {
			return
		}
		// A packed run finds the key by its parts.
		ix := mustDecode(t, encode(t, New([]Object{{Key: key, Size: 1}, {Key: key + "x", Size: 2}}, time.Time{})))
		if o, ok := ix.Lookup(key); !ok || o.Key != key || o.Size != 1 {
			t.Fatalf("Lookup(%q) = %+v, %v", key, o, ok)
		}
		if got := collect(ix); len(got) != 2 || got[0].Key != key {
			t.Fatalf("objects %+v", got)
		}
	})
}

func mustDecode(t testing.TB, data []byte) *Index {
	t.Helper()
	ix, err := Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if ix.base.pk == nil {
		t.Fatal("Decode made a plain run")
	}
	return ix
}

// sameIndex checks that two indexes (a plain one and a packed one) answer
// alike: objects, lookups of keys and of near misses, directories.
func sameIndex(t *testing.T, plain, packed *Index, keys []string) {
	t.Helper()
	want, got := collect(plain), collect(packed)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("objects differ: %d and %d", len(want), len(got))
	}
	if plain.Len() != packed.Len() || plain.TotalSize() != packed.TotalSize() {
		t.Errorf("Len, TotalSize %d %d, want %d %d", packed.Len(), packed.TotalSize(), plain.Len(), plain.TotalSize())
	}
	probe := func(k string) {
		wo, wok := plain.Lookup(k)
		gotO, gok := packed.Lookup(k)
		if wok != gok || !reflect.DeepEqual(wo, gotO) {
			t.Fatalf("Lookup(%q) = %+v, %v; want %+v, %v", k, gotO, gok, wo, wok)
		}
		if gok && gotO.Key != k {
			t.Fatalf("Lookup(%q).Key = %q", k, gotO.Key)
		}
	}
	dirs := map[string]bool{"": true}
	for _, k := range keys {
		probe(k)
		for _, m := range []string{k + ".sig", k[:len(k)-1], k + "/", strings.ToUpper(k), "x" + k} {
			probe(m)
		}
		for i := range k {
			if k[i] == '/' {
				dirs[k[:i]] = true
				dirs[k[:i+1]] = true
				dirs[k[:i]+"x"] = true
			}
		}
		dirs[k] = true
		dirs[k[:len(k)/2]] = true
	}
	for d := range dirs {
		if plain.IsDir(d) != packed.IsDir(d) {
			t.Fatalf("IsDir(%q) = %v", d, packed.IsDir(d))
		}
		if w, g := plain.Children(d), packed.Children(d); !reflect.DeepEqual(w, g) {
			t.Fatalf("Children(%q) = %v, want %v", d, g, w)
		}
	}
	if w, g := Summarize(plain), Summarize(packed); !reflect.DeepEqual(w.ByTask, g.ByTask) ||
		!reflect.DeepEqual(w.ByPrefix, g.ByPrefix) || w.Packages != g.Packages || w.Siginfo != g.Siginfo ||
		w.Accessed != g.Accessed || !w.LastAccess.Equal(g.LastAccess) {
		t.Errorf("Summarize = %+v, want %+v", g, w)
	}
}

func TestPackedMatchesPlain(t *testing.T) {
	keys := append(realisticKeys(t), synthKeys(t, 3000, 9)...)
	keys = append(keys, oddKeys()...)
	keys = append(keys, "a", "a!", "a.b", "a/x", "a/y/z", "ab", "b-/c", "b./c", "z")
	objs := randomObjects(keys, 9)
	for i := range objs {
		if i%3 == 0 {
			objs[i].Accessed = time.Unix(1_750_000_000+int64(i), 0)
		}
	}
	objs[5].ModTime = time.Time{}
	plain := New(objs, time.Unix(1_750_000_000, 0))
	data := encode(t, plain)
	packed := mustDecode(t, data)
	if len(packed.base.pk.verb) == 0 || len(packed.base.pk.tmpls) == 0 {
		t.Fatalf("%d verbatim keys, %d templates", len(packed.base.pk.verb), len(packed.base.pk.tmpls))
	}
	sameIndex(t, plain, packed, keys)
	if again := encode(t, packed); !bytes.Equal(again, data) {
		t.Error("a decoded index encodes differently")
	}

	// Journal segments on top of each: new keys between the snapshot's,
	// access times for both, a key added twice.
	r := rand.New(rand.NewPCG(9, 9))
	var added []Object
	for _, k := range synthKeys(t, 400, 10) {
		added = append(added, Object{Key: k, Size: r.Int64N(1000), ModTime: time.Unix(1_760_000_000, 0)})
	}
	added = append(added, Object{Key: keys[0], Size: 1}, Object{Key: "a/w", Size: 2}, Object{Key: "0", Size: 3})
	var acc []Access
	for i := 0; i < len(keys); i += 7 {
		acc = append(acc, Access{Key: keys[i], Time: time.Unix(1_770_000_000+int64(i), 0)})
	}
	segs := []*Segment{
		{Key: segmentKey(1, "w"), Added: added[:200], Accessed: acc[:len(acc)/2]},
		{Key: segmentKey(2, "w"), Added: added[150:], Accessed: acc[len(acc)/2:]},
	}
	allKeys := slices.Clone(keys)
	for _, o := range added {
		allKeys = append(allKeys, o.Key)
	}
	for n := 1; n <= len(segs); n++ {
		p, q := apply(plain, segs[:n]), apply(packed, segs[:n])
		if q.base.pk != packed.base.pk {
			t.Error("apply copied the packed run")
		}
		sameIndex(t, p, q, allKeys)
		if !bytes.Equal(encode(t, p), encode(t, q)) {
			t.Errorf("%d segments: encodings differ", n)
		}
		// A packed run merged with a plain one gives them in order.
		m := mergeRuns(q.extra, q.base)
		var mk []string
		for i := range m.len() {
			mk = append(mk, m.key(i))
		}
		var wk []string
		for o := range p.Objects {
			wk = append(wk, o.Key)
		}
		if !slices.Equal(mk, wk) {
			t.Errorf("%d segments: merged runs out of order", n)
		}
	}
}

func TestPackedEmpty(t *testing.T) {
	ix := mustDecode(t, encode(t, New(nil, time.Time{})))
	if _, ok := ix.Lookup("ab/cd/x:" + testHash); ok || ix.Len() != 0 || ix.IsDir("ab") || len(ix.Children("")) != 0 {
		t.Error("empty packed index is not empty")
	}
}

// TestPackedHeap checks the memory of a packed index of realistic names:
// far less than the 220 bytes an object takes in a plain one.
func TestPackedHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const n = 100_000
	data := encode(t, New(randomObjects(synthKeys(t, n, 42), 42), time.Now()))
	heap, ix := heapOf(func() *Index { return mustDecode(t, data) })
	runtime.KeepAlive(data) // not the index's memory: the input's
	t.Logf("packed: %.1f bytes/object, %d templates, %d verbatim keys", heap/n, len(ix.base.pk.tmpls), len(ix.base.pk.verb))
	// 88-byte records, a hash table of 4 to 8 bytes a record, templates.
	if heap/n > 110 {
		t.Errorf("heap %.1f bytes/object, want at most 110", heap/n)
	}
}

// heapOf returns the heap f's result keeps, in bytes, and the result.
func heapOf(f func() *Index) (float64, *Index) {
	var before, after runtime.MemStats
	runtime.GC() // twice: the first only moves sync.Pool contents aside
	runtime.GC()
	runtime.ReadMemStats(&before)
	ix := f()
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	return float64(int64(after.HeapAlloc) - int64(before.HeapAlloc)), ix
}

// timedDecode decodes data, failing the test on an error, and returns the
// index, how long Decode took, and the heap the index keeps, in bytes.
func timedDecode(t *testing.T, data []byte) (*Index, time.Duration, float64) {
	t.Helper()
	var elapsed time.Duration
	heap, ix := heapOf(func() *Index {
		start := time.Now()
		ix, err := Decode(bytes.NewReader(data))
		elapsed = time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		return ix
	})
	return ix, elapsed, heap
}
