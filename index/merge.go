package index

import (
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"
)

// apply returns base with the records of segs applied in the given order
// (callers sort segments by key, which is time order). The rules give the
// same index on every host, and applying a segment twice changes nothing:
//
//   - an object already in the index keeps its record: the first record of
//     a key wins (snapshot before segments, earlier segment first), as the
//     store keeps the first writer's object;
//   - an object's access time is the latest recorded;
//   - access records of keys without an object in the result are dropped
//     (so an access recorded before the object's own record is kept only
//     when both are applied together);
//   - of the equivalences reported for one (method, taskhash), the first
//     is in force (snapshot before segments, earlier segment first, and in
//     a segment the order recorded), as in bitbake's database, where the
//     first insert wins; likewise the first record of a (method, outhash)
//     is the one later reports of that output are matched against.
//     Records that are neither are dropped.
//   - of the sign-offs of one object key, digest and fingerprint, the
//     first is kept (a signer that writes its record twice changes
//     nothing); which ones count is decided when they are read
//     (Index.Signoffs), against the object the index then holds.
//
// Every host applies the same snapshot and segments in the same order and
// so puts the same records in force. A segment that turns up late with an
// earlier key (a writer's slow upload, or a skewed clock) can still
// displace a record in force until a compaction has folded the later one
// into the snapshot; so can Live.Apply, which applies this process's own
// segments at once, until the next refresh puts them in key order.
//
// The result shares base's entries and keys: only the objects the segments
// add are new (in the extra run), and the access times are copied when a
// segment changes one; new equivalences make a new extra run of them.
func apply(base *Index, segs []*Segment) *Index { return applyFolded(base, segs, nil) }

// applyFolded is apply with the access times of folded taken as recorded
// too: those of segments the loader decoded without keeping their access
// records (see accessFold).
func applyFolded(base *Index, segs []*Segment, folded *accessFold) *Index {
	if base == nil {
		base = &Index{created: noTime}
	}
	out := *base
	out.covered = nil
	if len(segs) == 0 {
		out.covered = base.covered
		return &out
	}
	var (
		reps []pendingEq
		eqs  = eqSeen{winner: map[string]bool{}, out: map[string]bool{}}
		adds []Object
		seen = map[string]bool{}
		sigs sigSeen
		acc  = map[string]uint32{}
		keys = make([]string, 0, len(segs))
	)
	latest := func(key string, at uint32) {
		if at > acc[key] {
			acc[key] = at
		}
	}
	for _, seg := range segs {
		keys = append(keys, seg.Key)
		for _, o := range seg.Added {
			if o.Size < 0 || !validKey(o.Key) {
				continue // never decoded; a caller's bug
			}
			if at := toSecs(o.Accessed); at != 0 {
				latest(o.Key, at)
			}
			if seen[o.Key] {
				continue
			}
			seen[o.Key] = true
			if _, ok := base.base.find(o.Key); ok {
				continue
			}
			if _, ok := base.extra.find(o.Key); ok {
				continue
			}
			o.Accessed = time.Time{} // set from acc below
			adds = append(adds, o)
		}
		for _, a := range seg.Accessed {
			if at := toSecs(a.Time); at != 0 {
				latest(a.Key, at)
			}
		}
		for i := range seg.Reported {
			if e := &seg.Reported[i]; e.Validate() == nil { // else a caller's bug
				reps = eqs.add(base, e, reps)
			}
		}
		sigs.take(base, seg.Signed)
		out.invalid += seg.Invalid
	}
	if len(reps) > 0 {
		b := newEqBuilder(&base.eqExtra, len(reps))
		for _, p := range reps {
			b.add(p.e, p.flags)
		}
		out.eqExtra = b.finish()
	}
	out.sigExtra = sigs.into(base.sigExtra)
	out.applied += len(segs)
	out.covered = unionSorted(base.covered, keys)
	if len(adds) > 0 {
		nr := newRun(adds)
		out.extra = mergeRuns(base.extra, nr)
		out.total = addSat(out.total, nr.size())
	}
	if len(acc) > 0 {
		out.base = withAccess(out.base, acc)
		out.extra = withAccess(out.extra, acc)
	}
	out.base = withFoldedAccess(out.base, folded)
	out.extra = withFoldedAccess(out.extra, folded)
	return &out
}

// pendingEq is an equivalence record apply keeps, with its part.
type pendingEq struct {
	e     *Equivalence
	flags uint8
}

// eqSeen holds the (method, taskhash) and (method, outhash) pairs of the
// records apply has taken from its segments so far.
type eqSeen struct {
	winner, out map[string]bool
}

// add appends e to reps, if it is the first record of its (method,
// taskhash) or of its (method, outhash) in base and what was seen before.
func (s eqSeen) add(base *Index, e *Equivalence, reps []pendingEq) []pendingEq {
	var flags uint8
	tk := e.Method + "\x00" + e.Taskhash
	if !s.winner[tk] {
		s.winner[tk] = true
		if !base.hasWinner(e.Method, e.Taskhash) {
			flags |= eqWinner
		}
	}
	if e.Outhash != "" {
		ok := e.Method + "\x00" + e.Outhash
		if !s.out[ok] {
			s.out[ok] = true
			if !base.hasFirstOut(e.Method, e.Outhash) {
				flags |= eqFirstOut
			}
		}
	}
	if flags == 0 {
		return reps
	}
	return append(reps, pendingEq{e, flags})
}

// withAccess returns r with the access times of acc that are later than
// its own, copying the access times (never r's) if any changes.
func withAccess(r run, acc map[string]uint32) run {
	copied := false
	for key, at := range acc {
		if i, ok := r.find(key); ok {
			r.later(i, at, &copied)
		}
	}
	return r
}

// later sets the access time of entry i to at if that is later, copying
// the access times first unless *copied (r's own are shared).
func (r *run) later(i int, at uint32, copied *bool) {
	if r.atime(i) >= at {
		return
	}
	if !*copied {
		nat := make([]uint32, r.len())
		copy(nat, r.at)
		r.at = nat
		*copied = true
	}
	r.at[i] = at
}

// mergeRuns merges two sorted runs with disjoint keys. The result is
// plain, unless one run is empty and the other is returned.
func mergeRuns(a, b run) run {
	if a.len() == 0 {
		return b
	}
	if b.len() == 0 {
		return a
	}
	na, nb := a.len(), b.len()
	out := run{es: make([]entry, 0, na+nb)}
	if a.at != nil || b.at != nil {
		out.at = make([]uint32, 0, na+nb)
	}
	i, j := 0, 0
	for i < na || j < nb {
		src, k := &b, &j
		if j == nb || (i < na && a.cmp(i, b.key(j)) < 0) {
			src, k = &a, &i
		}
		out.ck.add(len(out.es), src.chunks(*k))
		out.es = append(out.es, src.entry(*k))
		if out.at != nil {
			out.at = append(out.at, src.atime(*k))
		}
		*k++
	}
	out.ck.finish()
	return out
}

// unionSorted returns the sorted union of a sorted slice and any slice.
func unionSorted(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	out = append(out, a...)
	out = append(out, b...)
	slices.SortFunc(out, strings.Compare)
	return slices.Compact(out)
}

// accessFold is the latest access time of each key recorded in a set of
// segments, folded as they are decoded: a journal of 10 million access
// records (a farm's day) decoded and kept as records took gigabytes, the
// fold takes about 24 bytes a distinct key. Keys are held as a 128-bit
// hash (two maphash seeds of this process), not as strings: collisions
// are as unlikely as a random 128-bit match, and every key that matters
// is one the index holds, whose key gives the hash again.
type accessFold struct {
	s0, s1 maphash.Seed
	mu     sync.Mutex // protects at while segments are decoded at once
	at     map[accessHash]uint32
}

type accessHash [2]uint64

func newAccessFold() *accessFold {
	return &accessFold{s0: maphash.MakeSeed(), s1: maphash.MakeSeed(), at: map[accessHash]uint32{}}
}

func (f *accessFold) hash(key string) accessHash {
	return accessHash{maphash.String(f.s0, key), maphash.String(f.s1, key)}
}

// foldBatch collects the (hash, time) pairs of one segment being decoded,
// for the fold to take once the segment has decoded whole (a corrupt one
// is skipped, with none of its records), under one lock. Pairs are kept
// in blocks, not one slice grown by copying: a segment may hold a million.
type foldBatch struct {
	f      *accessFold
	blocks [][]foldPair
}

type foldPair struct {
	h  accessHash
	at uint32
}

const foldBlock = 1 << 14

func (b *foldBatch) add(key string, at uint32) {
	if at == 0 {
		return
	}
	if n := len(b.blocks); n == 0 || len(b.blocks[n-1]) == foldBlock {
		b.blocks = append(b.blocks, make([]foldPair, 0, foldBlock))
	}
	last := &b.blocks[len(b.blocks)-1]
	*last = append(*last, foldPair{b.f.hash(key), at})
}

// flush folds the pairs in and forgets them.
func (b *foldBatch) flush() {
	if len(b.blocks) == 0 {
		return
	}
	f := b.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, blk := range b.blocks {
		for _, p := range blk {
			if p.at > f.at[p.h] {
				f.at[p.h] = p.at
			}
		}
	}
	b.blocks = nil
}

// withFoldedAccess returns r with the access times of f that are later
// than its own, copying the access times (never r's) if any changes. It
// visits every entry of r: a fold is of many keys, about as many as r.
func withFoldedAccess(r run, f *accessFold) run {
	if f == nil || len(f.at) == 0 {
		return r
	}
	copied := false
	var buf []byte
	for i := range r.len() {
		buf = r.appendKey(buf[:0], i)
		if at, ok := f.at[accessHash{maphash.Bytes(f.s0, buf), maphash.Bytes(f.s1, buf)}]; ok {
			r.later(i, at, &copied)
		}
	}
	return r
}
