package index

import (
	"bufio"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// names returns the sample of real object names in testdata (every 7th
// name of compat/core-image-minimal-sstate-names.txt).
func names(t testing.TB) []string {
	t.Helper()
	return readNames(t, "testdata/names.txt")
}

// readNames returns the non-empty lines of the file at path, trimmed.
func readNames(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// realisticKeys is the sample of names plus their .siginfo companions.
func realisticKeys(t testing.TB) []string {
	var keys []string
	for _, n := range names(t) {
		keys = append(keys, n, n+".siginfo")
	}
	return keys
}

// randomHash returns 64 random hex digits drawn from r.
func randomHash(r *rand.Rand) string {
	var h [64]byte
	for i := range h {
		h[i] = hexDigits[r.IntN(16)]
	}
	return string(h[:])
}

// synthKey returns a key shaped like a random one of tmpl (same PN, arch,
// task and prefix) with a random unihash, drawn from r.
func synthKey(r *rand.Rand, tmpl []string) string {
	name := tmpl[r.IntN(len(tmpl))]
	dir, base := "", name
	if j := strings.LastIndexByte(name, '/'); j >= 0 {
		dir, base = name[:j], name[j+1:]
	}
	prefix := sstatePrefix(dir)
	c := strings.LastIndexByte(base, ':')
	u := strings.IndexByte(base[c:], '_') + c
	h := randomHash(r)
	key := h[0:2] + "/" + h[2:4] + "/" + base[:c+1] + h + base[u:]
	if prefix != "" {
		key = prefix + "/" + key
	}
	return key
}

// synthKeys returns n distinct keys shaped like the sample (same PN, arch,
// task and prefix distribution) with random unihashes; about half are
// .siginfo companions of the other half.
func synthKeys(t testing.TB, n int, seed uint64) []string {
	tmpl := names(t)
	r := rand.New(rand.NewPCG(seed, 1))
	seen := make(map[string]bool, n)
	out := make([]string, 0, n)
	for len(out) < n {
		key := synthKey(r, tmpl)
		for _, k := range []string{key, key + ".siginfo"} {
			if len(out) < n && !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	return out
}

// randomObject returns an object named key with a random size, mtime and
// digest drawn from r.
func randomObject(r *rand.Rand, key string) Object {
	o := Object{Key: key, Size: r.Int64N(1 << 30), ModTime: time.Unix(1.7e9+r.Int64N(1e8), r.Int64N(1e9))}
	for j := range o.SHA256 {
		o.SHA256[j] = byte(r.Uint32())
	}
	return o
}

// randomObjects gives each key a random size, mtime and digest.
func randomObjects(keys []string, seed uint64) []Object {
	r := rand.New(rand.NewPCG(seed, 2))
	objs := make([]Object, len(keys))
	for i, k := range keys {
		objs[i] = randomObject(r, k)
	}
	return objs
}

func collect(ix *Index) []Object {
	var out []Object
	for o := range ix.Objects {
		out = append(out, o)
	}
	return out
}

func TestNew(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 123456789)
	long := strings.Repeat("x", MaxKeyLen+1)
	in := []Object{
		{Key: "b/x", Size: 2, ModTime: t0},
		{Key: "a/x", Size: 1, ModTime: t0},
		{Key: "b/x", Size: 3, ModTime: t0.Add(time.Second)}, // duplicate: last wins
		{Key: ".sstatefs/index/snapshot.v1", Size: 9},       // metadata
		{Key: "", Size: 1},
		{Key: "/abs", Size: 1},
		{Key: "a//b", Size: 1},
		{Key: "a/./b", Size: 1},
		{Key: "../x", Size: 1},
		{Key: "a/", Size: 1},
		{Key: "nul\x00", Size: 1},
		{Key: long, Size: 1},
		{Key: "neg", Size: -1},
		{Key: "c", Size: 0}, // zero time, zero digest
	}
	created := time.Now() // carries a monotonic reading, which New drops
	ix := New(in, created)
	in[0].Key = "mutated" // New copied

	want := []string{"a/x", "b/x", "c"}
	var got []string
	for o := range ix.Objects {
		got = append(got, o.Key)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("keys = %q, want %q", got, want)
	}
	if ix.Len() != 3 || ix.TotalSize() != 4 {
		t.Errorf("Len, TotalSize = %d, %d; want 3, 4", ix.Len(), ix.TotalSize())
	}
	if o, _ := ix.Lookup("b/x"); o.Size != 3 || !o.ModTime.Equal(t0.Add(time.Second)) {
		t.Errorf("duplicate: got %+v, want the last one", o)
	}
	if o, _ := ix.Lookup("c"); !o.ModTime.IsZero() || o.SHA256 != ([32]byte{}) {
		t.Errorf("zero time and digest not kept: %+v", o)
	}
	if !ix.Created().Equal(created) || ix.Created() == created {
		t.Errorf("Created = %v, want %v without monotonic reading", ix.Created(), created)
	}
	if _, ok := ix.Lookup(".sstatefs/index/snapshot.v1"); ok {
		t.Error("metadata key kept")
	}
	if New(nil, time.Time{}).Created() != (time.Time{}) {
		t.Error("zero created time not kept")
	}
}

func TestNilIndex(t *testing.T) {
	var ix *Index
	if _, ok := ix.Lookup("a"); ok || ix.Len() != 0 || ix.TotalSize() != 0 || !ix.Created().IsZero() ||
		ix.IsDir("a") || !ix.IsDir("") || ix.Children("") != nil {
		t.Error("nil index is not empty")
	}
	ix.Objects(func(Object) bool { t.Error("nil index has objects"); return true })
}

func TestObjectsStops(t *testing.T) {
	ix := New(randomObjects([]string{"a", "b", "c"}, 1), time.Time{})
	n := 0
	ix.Objects(func(o Object) bool { n++; return o.Key != "b" })
	if n != 2 {
		t.Errorf("visited %d objects, want 2", n)
	}
}

// model is the brute-force answer for IsDir and Children.
func model(keys []string) map[string]map[string]bool {
	dirs := map[string]map[string]bool{"": {}}
	for _, k := range keys {
		els := strings.Split(k, "/")
		for i := range els {
			dir := strings.Join(els[:i], "/")
			if dirs[dir] == nil {
				dirs[dir] = map[string]bool{}
			}
			isDir := i < len(els)-1
			dirs[dir][els[i]] = dirs[dir][els[i]] || isDir
		}
	}
	return dirs
}

func checkTree(t *testing.T, keys []string) {
	t.Helper()
	objs := randomObjects(keys, 3)
	ix := New(objs, time.Now())
	if ix.Len() != len(keys) {
		t.Fatalf("Len = %d, want %d", ix.Len(), len(keys))
	}
	for _, o := range objs {
		got, ok := ix.Lookup(o.Key)
		if !ok || got.Key != o.Key || got.Size != o.Size || got.SHA256 != o.SHA256 || !got.ModTime.Equal(o.ModTime) {
			t.Fatalf("Lookup(%q) = %+v, %v; want %+v", o.Key, got, ok, o)
		}
		for _, miss := range []string{o.Key + "x", o.Key[:len(o.Key)-1], o.Key + "/"} {
			if _, ok := ix.Lookup(miss); ok && !slices.Contains(keys, miss) {
				t.Fatalf("Lookup(%q) found a missing key", miss)
			}
		}
	}
	m := model(keys)
	for dir, kids := range m {
		if !ix.IsDir(dir) {
			t.Errorf("IsDir(%q) = false", dir)
		}
		var want []Entry
		for name, isDir := range kids {
			want = append(want, Entry{Name: name, IsDir: isDir})
		}
		slices.SortFunc(want, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
		if got := ix.Children(dir); !reflect.DeepEqual(got, want) {
			t.Errorf("Children(%q) =\n%v\nwant\n%v", dir, got, want)
		}
		if _, ok := ix.Lookup(dir); ok != slices.Contains(keys, dir) {
			t.Errorf("Lookup(%q) of a directory = %v", dir, ok)
		}
	}
	// Not directories: objects, partial names, slashes.
	var notDirs []string
	for _, k := range keys {
		notDirs = append(notDirs, k, k[:len(k)/2], k+"/")
	}
	for dir := range m {
		if dir != "" {
			notDirs = append(notDirs, dir+"/", "/"+dir, dir[:len(dir)-1], dir+"x")
		}
	}
	for _, d := range notDirs {
		if m[d] != nil {
			continue
		}
		if ix.IsDir(d) {
			t.Errorf("IsDir(%q) = true", d)
		}
		if c := ix.Children(d); c != nil {
			t.Errorf("Children(%q) = %v, want nil", d, c)
		}
	}
}

func TestTreeRealistic(t *testing.T) {
	keys := realisticKeys(t)
	checkTree(t, keys)

	ix := New(randomObjects(keys, 4), time.Now())
	root := ix.Children("")
	if !slices.Contains(root, Entry{Name: "debian-12", IsDir: true}) {
		t.Errorf("root lacks debian-12/: %v", root)
	}
	if !ix.IsDir("debian-12") || ix.IsDir("debian") || ix.IsDir("debian-1") {
		t.Error("IsDir of the native prefix is wrong")
	}
	// A leaf directory holds the object and its companion.
	k := names(t)[0]
	dir, base := k[:strings.LastIndexByte(k, '/')], k[strings.LastIndexByte(k, '/')+1:]
	kids := ix.Children(dir)
	if !slices.Contains(kids, Entry{Name: base}) || !slices.Contains(kids, Entry{Name: base + ".siginfo"}) {
		t.Errorf("Children(%q) = %v, want %s and its .siginfo", dir, kids, base)
	}
}

func TestTreeEdgeCases(t *testing.T) {
	// Names whose key order differs from name order ("a.b" < "a/x" but
	// "a" < "a.b"), a name that is both object and directory, deep dirs.
	keys := []string{"a", "a!", "a.b", "a/x", "a/y/z", "a/y/z2/deep/er", "ab", "b/c", "b-/c", "b./c", "z"}
	checkTree(t, keys)
	ix := New(randomObjects(keys, 5), time.Time{})
	want := []Entry{{"a", true}, {"a!", false}, {"a.b", false}, {"ab", false}, {"b", true}, {"b-", true}, {"b.", true}, {"z", false}}
	if got := ix.Children(""); !reflect.DeepEqual(got, want) {
		t.Errorf("Children(\"\") = %v, want %v", got, want)
	}
	if got := New(nil, time.Time{}).Children(""); len(got) != 0 {
		t.Errorf("empty index root = %v", got)
	}
}

func TestValidKey(t *testing.T) {
	for key, want := range map[string]bool{
		"a": true, "ab/cd/sstate:x::1:r0::14:ab_fetch.tar.zst": true, "a/b/c": true, ".hidden/x": true,
		"": false, "/a": false, "a/": false, "a//b": false, ".": false, "..": false, "a/../b": false,
		"a/./b": false, "x\x00": false, ".sstatefs/x": false, strings.Repeat("k", MaxKeyLen): true,
		strings.Repeat("k", MaxKeyLen+1): false,
	} {
		if got := validKey(key); got != want {
			t.Errorf("validKey(%.20q) = %v, want %v", key, got, want)
		}
	}
}
