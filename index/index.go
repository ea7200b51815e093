// Package index is the metadata catalog of sstatefs: which objects a store
// holds (key, size, modification time, SHA-256, last access) and the hash
// equivalences reported for it (equiv.go: bitbake's taskhash → unihash
// mappings with their outhash) and the sign-offs recorded for its objects
// (signoff.go: detached OpenPGP signatures over an object's bytes), kept
// in memory as an immutable, sorted
// index that answers existence checks, directory listings and equivalence
// queries without touching the network.
//
// The index lives in the store itself, beside the objects, so that any
// number of mounts on any number of hosts share it without a server:
//
//   - a snapshot (format.go, SnapshotKey), written whole and replaced
//     atomically by `sstatefs index build` (build.go) and by compaction;
//   - a journal (segment.go, under JournalPrefix): immutable segments, each
//     created once by one writer (journal.go), recording the objects it
//     published, the accesses bitbake made, the equivalences reported and
//     the sign-offs recorded;
//   - readers (load.go, LoadAll) apply the segments the snapshot does not
//     cover on top of it, with merge rules that give the same index on
//     every host (merge.go); compaction (compact.go) folds segments into a
//     new snapshot and deletes them, while writers keep writing.
//
// Live (live.go) is the holder through which the mount reads the current
// index while it is refreshed in the background; summary.go is behind
// `sstatefs index show`. The package knows nothing about FUSE.
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
	// Accessed is the last access recorded in the journal (bitbake's
	// utimensat or touch on the mount), to the second; zero if none.
	Accessed time.Time
	// Chunks are the SHA-256 digests of the object's ChunkSize pieces, in
	// order (NumChunks(Size) of them), recorded at publication, push or
	// index build; nil for objects of ChunkSize bytes or fewer and where
	// none were recorded (older sstatefs). Shared with the index: never
	// change them.
	Chunks [][32]byte
}

// Entry is one name directly inside a directory of the index.
type Entry struct {
	Name  string
	IsDir bool
}

// Index is an immutable snapshot of a store's objects, possibly with the
// records of journal segments applied on top. Safe for concurrent use. A
// nil *Index behaves as an empty one.
//
// The objects are held in two sorted runs with disjoint keys: base, from
// the snapshot (or New), and extra, the objects journal segments added.
// Applying segments thus copies neither the snapshot's entries nor its keys.
// Equivalence records and sign-offs are split the same way (eqBase,
// eqExtra; sigBase, sigExtra).
type Index struct {
	base    run
	extra   run
	total   int64 // sum of sizes, saturating
	created int64 // unix nanoseconds, noTime if unknown

	eqBase, eqExtra eqRun
	// sigBase and sigExtra: the sign-offs (signoff.go), from the snapshot
	// and from journal segments.
	sigBase, sigExtra sigRun
	invalid           int // equivalence and sign-off records dropped as invalid when decoding

	covered  []string // sorted keys of the journal segments whose records are included
	snapshot bool     // read from a snapshot (Decode), not journal-only or New
	complete bool     // descends from a listing of the whole store (see Sources)
	applied  int      // journal segments applied on top of the snapshot
	skipped  []error  // segments that could not be read, each error naming its key
}

// run is a sorted sequence of objects with unique keys and their access
// times, in one of two forms: plain entries (New, journal segments: few
// objects, or a build's, whose keys are allocated anyway), or packed
// (Decode: a snapshot's objects, in a third of the memory; see packed.go).
type run struct {
	es []entry // the entries of a plain run
	pk *packed // the entries of a packed run, nil for a plain one
	// at is nil when no entry has an access time, else parallel to the
	// entries: unix seconds, 0 for none. Four bytes an object, and none
	// at all in an index without access records.
	at []uint32
	// ck holds the chunk digests of the entries that have them.
	ck chunkTable
}

// entry is the in-memory form of an Object in a plain run: times as
// integers, which keeps it at 64 bytes plus the key and makes encoding
// exact.
type entry struct {
	key   string
	size  int64
	mtime int64 // unix nanoseconds, noTime for the zero time.Time
	sha   [32]byte
}

func (r *run) len() int {
	if r.pk != nil {
		return len(r.pk.recs)
	}
	return len(r.es)
}

// key returns the key of entry i (allocated, in a packed run).
func (r *run) key(i int) string {
	if r.pk != nil {
		return r.pk.key(i)
	}
	return r.es[i].key
}

// appendKey appends the key of entry i to dst.
func (r *run) appendKey(dst []byte, i int) []byte {
	if r.pk != nil {
		return r.pk.appendKey(dst, i, -1)
	}
	return append(dst, r.es[i].key...)
}

// cmp compares the key of entry i with key, like strings.Compare.
func (r *run) cmp(i int, key string) int {
	if r.pk != nil {
		return r.pk.cmp(i, key, false)
	}
	return compare(r.es[i].key, key)
}

// meta returns the size, modification time (unix nanoseconds or noTime)
// and digest of entry i.
func (r *run) meta(i int) (size, mtime int64, sha *[32]byte) {
	if r.pk != nil {
		rec := &r.pk.recs[i]
		return rec.size, rec.mtime, &rec.sha
	}
	e := &r.es[i]
	return e.size, e.mtime, &e.sha
}

// entry returns entry i in the plain form.
func (r *run) entry(i int) entry {
	if r.pk == nil {
		return r.es[i]
	}
	size, mtime, sha := r.meta(i)
	return entry{key: r.key(i), size: size, mtime: mtime, sha: *sha}
}

func (r *run) object(i int) Object { return r.objectAs(i, r.key(i)) }

// objectAs returns entry i with key, which must be its key.
func (r *run) objectAs(i int, key string) Object {
	size, mtime, sha := r.meta(i)
	o := Object{Key: key, Size: size, ModTime: fromNanos(mtime), SHA256: *sha, Accessed: fromSecs(r.atime(i))}
	if size > ChunkSize {
		o.Chunks = r.ck.get(i) // a search only for the few that can have them
	}
	return o
}

// chunks returns the chunk digests of entry i, nil if it has none.
func (r *run) chunks(i int) [][32]byte { return r.ck.get(i) }

func (r *run) atime(i int) uint32 {
	if r.at == nil {
		return 0
	}
	return r.at[i]
}

// lowerBound returns the first position in [lo, len) whose key is >= key.
func (r *run) lowerBound(lo int, key string) int { return r.search(lo, r.len(), key) }

// search returns the first position in [lo, hi) whose key is >= key, or hi.
func (r *run) search(lo, hi int, key string) int {
	if r.pk != nil {
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if r.pk.cmp(m, key, false) < 0 {
				lo = m + 1
			} else {
				hi = m
			}
		}
		return lo
	}
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r.es[m].key < key {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// seek is lowerBound for a key expected near lo: it gallops from lo, so
// that walking a run to n keys in order costs O(n log(len/n)).
func (r *run) seek(lo int, key string) int {
	n := r.len()
	hi, step := lo, 1
	for hi < n && r.cmp(hi, key) < 0 {
		lo = hi + 1
		hi += step
		step <<= 1
	}
	return r.search(lo, min(hi, n), key)
}

// find returns the position of key.
func (r *run) find(key string) (int, bool) {
	if r.pk != nil {
		return r.pk.find(key)
	}
	i := r.lowerBound(0, key)
	return i, i < len(r.es) && r.es[i].key == key
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

// toSecs maps an access time to unix seconds in a uint32: 0 for the zero
// time, clamped to [1, 2106-02-07] otherwise (access times are recent).
func toSecs(t time.Time) uint32 {
	switch {
	case t.IsZero():
		return 0
	case t.Unix() < 1:
		return 1
	case t.Unix() > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(t.Unix())
}

func fromSecs(s uint32) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(int64(s), 0)
}

// MaxKeyLen is the longest key the index holds. Real keys are far shorter
// (bitbake cuts names to 254 characters; S3 keys end at 1024 bytes).
const MaxKeyLen = 4096

// validKey reports whether key is a key the index can hold: valid for
// backend.CheckKey (relative, no empty, "." or ".." elements, no NUL), not
// longer than MaxKeyLen and not under backend.MetaPrefix. It does not
// allocate, as Decode calls it for every key.
func validKey[K string | []byte](key K) bool {
	if len(key) == 0 || len(key) > MaxKeyLen || indexByte(key, 0) >= 0 ||
		len(key) >= len(backend.MetaPrefix) && string(key[:len(backend.MetaPrefix)]) == backend.MetaPrefix {
		return false
	}
	for rest := key; ; {
		i := indexByte(rest, '/')
		el := rest
		if i >= 0 {
			el = rest[:i]
		}
		if len(el) == 0 || el[0] == '.' && (len(el) == 1 || len(el) == 2 && el[1] == '.') {
			return false
		}
		if i < 0 {
			return true
		}
		rest = rest[i+1:]
	}
}

// New returns the complete index of a store holding objs (see
// Sources.Complete), created at created. It copies objs, sorts
// them by key and drops duplicate keys (the last one wins), keys under
// backend.MetaPrefix, and objects no store reports: keys that fail
// backend.CheckKey or are longer than MaxKeyLen, and negative sizes; chunk
// digests of the wrong number for the size are dropped too. Times are kept to the nanosecond (Accessed to the second); monotonic
// clock readings and locations are dropped (times come back in the local
// zone).
func New(objs []Object, created time.Time) *Index {
	ix := &Index{base: newRun(objs), created: toNanos(created), complete: true}
	ix.total = ix.base.size()
	return ix
}

// newRun sorts objs into a run, the last of equal keys winning.
func newRun(objs []Object) run {
	type item struct {
		entry
		at     uint32
		chunks [][32]byte
	}
	items := make([]item, 0, len(objs))
	anyAt := false
	for _, o := range objs {
		if o.Size < 0 || !validKey(o.Key) {
			continue
		}
		at := toSecs(o.Accessed)
		anyAt = anyAt || at != 0
		var chunks [][32]byte
		if len(o.Chunks) > 0 && validChunks(o.Size, o.Chunks) {
			chunks = o.Chunks
		}
		items = append(items, item{entry{key: o.Key, size: o.Size, mtime: toNanos(o.ModTime), sha: o.SHA256}, at, chunks})
	}
	slices.SortStableFunc(items, func(a, b item) int { return strings.Compare(a.key, b.key) })
	// Keep the last of each run of equal keys.
	n := 0
	for i := range items {
		if i+1 < len(items) && items[i+1].key == items[i].key {
			continue
		}
		items[n] = items[i]
		n++
	}
	r := run{es: make([]entry, n)}
	if anyAt {
		r.at = make([]uint32, n)
	}
	for i := range n {
		r.es[i] = items[i].entry
		if anyAt {
			r.at[i] = items[i].at
		}
		r.ck.add(i, items[i].chunks)
	}
	r.ck.finish()
	return r
}

func (r *run) size() int64 {
	var t int64
	for i := range r.len() {
		size, _, _ := r.meta(i)
		t = addSat(t, size)
	}
	return t
}

// addSat adds two non-negative sizes, saturating at math.MaxInt64.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// Lookup returns the object stored under key.
func (ix *Index) Lookup(key string) (Object, bool) {
	if ix == nil {
		return Object{}, false
	}
	if i, ok := ix.base.find(key); ok {
		return ix.base.objectAs(i, key), true
	}
	if ix.extra.len() > 0 {
		if i, ok := ix.extra.find(key); ok {
			return ix.extra.objectAs(i, key), true
		}
	}
	return Object{}, false
}

// Len is the number of objects.
func (ix *Index) Len() int {
	if ix == nil {
		return 0
	}
	return ix.base.len() + ix.extra.len()
}

// TotalSize is the sum of the objects' sizes (saturating at math.MaxInt64).
func (ix *Index) TotalSize() int64 {
	if ix == nil {
		return 0
	}
	return ix.total
}

// Created is when the snapshot was taken: objects created later may be
// missing from it, unless journal segments applied on top supply them.
func (ix *Index) Created() time.Time {
	if ix == nil {
		return time.Time{}
	}
	return fromNanos(ix.created)
}

// Sources says what an index was assembled from.
type Sources struct {
	// Snapshot: a snapshot was read. False for an index of journal
	// segments only (a store nobody compacted or indexed yet), or New.
	Snapshot bool
	// Complete: the index descends from a listing of the whole store
	// (Build, `sstatefs index build`; or New), so a key it lacks is absent,
	// not merely unrecorded. An index of journal segments alone is not:
	// the store may hold objects nobody recorded (an sstate-cache copied
	// in), so a miss must be checked in the store. Compaction keeps the
	// flag of the snapshot it starts from.
	Complete bool
	// Covered: the journal segments whose records the index includes,
	// folded into the snapshot or applied on top of it.
	Covered int
	// Applied: segments applied on top of the snapshot when loading. Many
	// of them mean the store is due for compaction.
	Applied int
	// Skipped: segments that could not be read (corrupt, or written by a
	// newer sstatefs), each error naming the segment. Their records are
	// missing from the index.
	Skipped []error
	// Invalid: equivalence and sign-off records dropped as invalid (see
	// Equivalence.Validate, Signoff.Validate) while reading the snapshot
	// and the segments,
	// which were otherwise read. Only a faulty writer makes them.
	Invalid int
}

// Sources says what the index was assembled from.
func (ix *Index) Sources() Sources {
	if ix == nil {
		return Sources{}
	}
	return Sources{Snapshot: ix.snapshot, Complete: ix.complete, Covered: len(ix.covered), Applied: ix.applied,
		Skipped: slices.Clone(ix.skipped), Invalid: ix.invalid}
}

// Covered returns the keys of the journal segments whose records the index
// includes, sorted. Encode writes them into the snapshot, so that readers
// of the snapshot skip those segments.
func (ix *Index) Covered() []string {
	if ix == nil {
		return nil
	}
	return slices.Clone(ix.covered)
}

// Objects calls fn for each object in key order until fn returns false.
// Its signature is an iter.Seq, so `for o := range ix.Objects` works.
func (ix *Index) Objects(fn func(Object) bool) {
	if ix == nil {
		return
	}
	ix.each(func(r *run, i int) bool { return fn(r.object(i)) })
}

// each calls fn for each entry of both runs in key order until fn returns
// false.
func (ix *Index) each(fn func(r *run, i int) bool) {
	a, b := &ix.base, &ix.extra
	i := 0
	for j := range b.len() {
		// The runs' keys are disjoint. extra is the short one, and plain.
		for end := a.seek(i, b.key(j)); i < end; i++ {
			if !fn(a, i) {
				return
			}
		}
		if !fn(b, j) {
			return
		}
	}
	for ; i < a.len(); i++ {
		if !fn(a, i) {
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
	return ix.base.hasPrefix(p) || ix.extra.hasPrefix(p)
}

func (r *run) hasPrefix(p string) bool {
	i := r.lowerBound(0, p)
	if i == r.len() {
		return false
	}
	if r.pk != nil {
		return r.pk.cmp(i, p, true) == 0
	}
	return strings.HasPrefix(r.es[i].key, p)
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
	out := ix.base.children(p, nil)
	out = ix.extra.children(p, out)
	// Key order is not name order ("a.b" < "a/x" but "a" < "a.b"), and a
	// name can come twice (object "a" and directory "a", or a name in
	// both runs).
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

// children appends the entries of r directly under prefix p to out.
func (r *run) children(p string, out []Entry) []Entry {
	for i := r.lowerBound(0, p); i < r.len(); {
		if r.pk != nil && r.pk.cmp(i, p, true) != 0 {
			break // before building the key
		}
		k := r.key(i)
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
		i = r.lowerBound(i+1, k[:len(p)+j]+"0")
	}
	return out
}
