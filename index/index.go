// Package index is the metadata catalog of sstatefs: which objects a store
// holds (key, size, modification time, SHA-256), kept in memory as an
// immutable, sorted snapshot that answers existence checks and directory
// listings without touching the network.
//
// It owns the snapshot's encoding in the store (format.go, under
// backend.MetaPrefix), building a snapshot by listing and hashing a store
// (build.go), the summary behind `sstatefs index show` (summary.go) and Live,
// the holder through which the mount reads the current snapshot while it is
// refreshed in the background (live.go). It knows nothing about FUSE.
package index

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

// Object is one object in the store.
type Object struct {
	Key     string    // store key, e.g. "debian-12/ab/cd/sstate:...tar.zst"
	Size    int64     // bytes
	ModTime time.Time // from the store, second precision or better; zero if unknown
	SHA256  [32]byte  // zero if unknown
}

// Entry is one name directly inside a directory of the index.
type Entry struct {
	Name  string
	IsDir bool
}

// Index is an immutable snapshot of a store's objects. Safe for concurrent
// use. A nil *Index behaves as an empty one.
type Index struct {
	entries []entry // sorted by key; keys unique and valid (see validKey)
	total   int64   // sum of sizes, saturating
	created int64   // unix nanoseconds, noTime if unknown
}

// entry is the in-memory form of an Object: times as integers, which keeps
// it at 64 bytes plus the key and makes encoding exact.
type entry struct {
	key   string
	size  int64
	mtime int64 // unix nanoseconds, noTime for the zero time.Time
	sha   [32]byte
}

func (e *entry) object() Object {
	return Object{Key: e.key, Size: e.size, ModTime: fromNanos(e.mtime), SHA256: e.sha}
}

// noTime stands for the zero time.Time, which has no unix-nanosecond value.
const noTime = math.MinInt64

var (
	minNanoTime = time.Unix(0, math.MinInt64+1)
	maxNanoTime = time.Unix(0, math.MaxInt64)
)

// toNanos maps t to unix nanoseconds, clamping times outside the range an
// int64 of nanoseconds can hold (years 1678 to 2262).
func toNanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return noTime
	case t.Before(minNanoTime):
		return math.MinInt64 + 1
	case t.After(maxNanoTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

func fromNanos(ns int64) time.Time {
	if ns == noTime {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// MaxKeyLen is the longest key the index holds. Real keys are far shorter
// (bitbake cuts names to 254 characters; S3 keys end at 1024 bytes).
const MaxKeyLen = 4096

// validKey reports whether key is a key the index can hold: valid for
// backend.CheckKey (relative, no empty, "." or ".." elements, no NUL), not
// longer than MaxKeyLen and not under backend.MetaPrefix. It does not
// allocate, as Decode calls it for every key.
func validKey(key string) bool {
	if key == "" || len(key) > MaxKeyLen || backend.IsMeta(key) || strings.IndexByte(key, 0) >= 0 {
		return false
	}
	for rest := key; ; {
		el, after, more := strings.Cut(rest, "/")
		if el == "" || el == "." || el == ".." {
			return false
		}
		if !more {
			return true
		}
		rest = after
	}
}

// New returns an index of objs created at created. It copies objs, sorts
// them by key and drops duplicate keys (the last one wins), keys under
// backend.MetaPrefix, and objects no store reports: keys that fail
// backend.CheckKey or are longer than MaxKeyLen, and negative sizes.
// Times are kept to the nanosecond; monotonic clock readings and locations
// are dropped (ModTime comes back in the local zone).
func New(objs []Object, created time.Time) *Index {
	es := make([]entry, 0, len(objs))
	for _, o := range objs {
		if o.Size < 0 || !validKey(o.Key) {
			continue
		}
		es = append(es, entry{key: o.Key, size: o.Size, mtime: toNanos(o.ModTime), sha: o.SHA256})
	}
	slices.SortStableFunc(es, func(a, b entry) int { return strings.Compare(a.key, b.key) })
	// Keep the last of each run of equal keys.
	out := es[:0]
	for i := range es {
		if i+1 < len(es) && es[i+1].key == es[i].key {
			continue
		}
		out = append(out, es[i])
	}
	out = slices.Clip(out)
	ix := &Index{entries: out, created: toNanos(created)}
	for i := range out {
		ix.total = addSat(ix.total, out[i].size)
	}
	return ix
}

// addSat adds two non-negative sizes, saturating at math.MaxInt64.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// lowerBound returns the first position in [lo, len) whose key is >= key.
func (ix *Index) lowerBound(lo int, key string) int {
	hi := len(ix.entries)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ix.entries[m].key < key {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Lookup returns the object stored under key.
func (ix *Index) Lookup(key string) (Object, bool) {
	if ix == nil {
		return Object{}, false
	}
	i := ix.lowerBound(0, key)
	if i < len(ix.entries) && ix.entries[i].key == key {
		return ix.entries[i].object(), true
	}
	return Object{}, false
}

// Len is the number of objects.
func (ix *Index) Len() int {
	if ix == nil {
		return 0
	}
	return len(ix.entries)
}

// TotalSize is the sum of the objects' sizes (saturating at math.MaxInt64).
func (ix *Index) TotalSize() int64 {
	if ix == nil {
		return 0
	}
	return ix.total
}

// Created is when the snapshot was taken: objects created later may be
// missing from it.
func (ix *Index) Created() time.Time {
	if ix == nil {
		return time.Time{}
	}
	return fromNanos(ix.created)
}

// Objects calls fn for each object in key order until fn returns false.
// Its signature is an iter.Seq, so `for o := range ix.Objects` works.
func (ix *Index) Objects(fn func(Object) bool) {
	if ix == nil {
		return
	}
	for i := range ix.entries {
		if !fn(ix.entries[i].object()) {
			return
		}
	}
}

// IsDir reports whether dir ("" = root, "ab", "debian-12/ab/cd") is a
// directory prefix of some key. The root is always a directory, even in an
// empty index. dir takes no leading or trailing slash.
func (ix *Index) IsDir(dir string) bool {
	if dir == "" {
		return true
	}
	if ix == nil {
		return false
	}
	p := dir + "/"
	i := ix.lowerBound(0, p)
	return i < len(ix.entries) && strings.HasPrefix(ix.entries[i].key, p)
}

// Children lists the entries directly in dir: names of subdirectories
// (IsDir true) and objects, sorted by name, each once. A name that is both
// an object and a directory prefix (possible in S3, not on a disk) is
// reported once, as a directory. It returns nil when dir is not a directory.
//
// It costs a binary search per entry, not a scan of everything below dir.
func (ix *Index) Children(dir string) []Entry {
	if ix == nil {
		return nil
	}
	p := ""
	if dir != "" {
		p = dir + "/"
	}
	var out []Entry
	for i := ix.lowerBound(0, p); i < len(ix.entries); {
		k := ix.entries[i].key
		if !strings.HasPrefix(k, p) {
			break
		}
		rest := k[len(p):]
		j := strings.IndexByte(rest, '/')
		if j < 0 {
			out = append(out, Entry{Name: rest})
			i++
			continue
		}
		out = append(out, Entry{Name: rest[:j], IsDir: true})
		// Skip every key under p+name+"/": they all sort before
		// p+name+"0", as '0' follows '/'.
		i = ix.lowerBound(i+1, k[:len(p)+j]+"0")
	}
	// Key order is not name order ("a.b" < "a/x" but "a" < "a.b"), and a
	// name can come twice (object "a" and directory "a").
	byName := func(a, b Entry) int { return strings.Compare(a.Name, b.Name) }
	if !slices.IsSortedFunc(out, byName) {
		slices.SortFunc(out, byName)
	}
	n := 0
	for _, e := range out {
		if n > 0 && out[n-1].Name == e.Name {
			out[n-1].IsDir = out[n-1].IsDir || e.IsDir
			continue
		}
		out[n] = e
		n++
	}
	return out[:n]
}
