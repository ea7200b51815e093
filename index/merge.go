package index

import (
	"slices"
	"strings"
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
//     when both are applied together).
//
// The result shares base's entries and keys: only the objects the segments
// add are new (in the extra run), and the access times are copied when a
// segment changes one.
func apply(base *Index, segs []*Segment) *Index {
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
		adds []Object
		seen = map[string]bool{}
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
	}
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
	return &out
}

// withAccess returns r with the access times of acc that are later than
// its own, copying the access times (never r's) if any changes.
func withAccess(r run, acc map[string]uint32) run {
	copied := false
	for key, at := range acc {
		i, ok := r.find(key)
		if !ok || r.atime(i) >= at {
			continue
		}
		if !copied {
			nat := make([]uint32, len(r.es))
			copy(nat, r.at)
			r.at = nat
			copied = true
		}
		r.at[i] = at
	}
	return r
}

// mergeRuns merges two sorted runs with disjoint keys.
func mergeRuns(a, b run) run {
	if len(a.es) == 0 {
		return b
	}
	if len(b.es) == 0 {
		return a
	}
	out := run{es: make([]entry, 0, len(a.es)+len(b.es))}
	if a.at != nil || b.at != nil {
		out.at = make([]uint32, 0, len(a.es)+len(b.es))
	}
	i, j := 0, 0
	for i < len(a.es) || j < len(b.es) {
		src, k := &b, &j
		if j == len(b.es) || (i < len(a.es) && a.es[i].key < b.es[j].key) {
			src, k = &a, &i
		}
		out.es = append(out.es, src.es[*k])
		if out.at != nil {
			out.at = append(out.at, src.atime(*k))
		}
		*k++
	}
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
