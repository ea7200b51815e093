package index

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/sstatefs/sstatefs/backend"
)

const (
	// loadAttempts: how often a load starts over when a segment vanishes
	// between List and Open. A compaction deleted it after writing a
	// snapshot that includes it, so reading again finds its records there.
	loadAttempts = 3
	// DefaultFetchConcurrency: segments downloaded at once. Each is one
	// GET of a few KiB, so a load of many segments is bound by round
	// trips: measured against versitygw at 100 ms RTT (BENCHMARKS.md,
	// "Start-up and refresh under many writers"), 2,000 segments took
	// 26.6 s at 8, 4.2 s at 64, 2.6 s at 128 and 2.2 s at 256; at 10 ms
	// RTT the CPU bounds it beyond 64. 128 connections for the seconds of
	// a start-up are nothing to an S3 server.
	DefaultFetchConcurrency = 128
	// fetchBytes bounds the listed bytes of the segments being downloaded
	// and decoded at once (one larger segment is read alone). Segments
	// are a few KiB, but one of 400,000 access records is ~10 MB
	// compressed and its records many times that while decoded; 128 of
	// them at once took gigabytes.
	fetchBytes = 32 << 20
)

// errVanished: a listed segment was gone when it was opened.
var errVanished = errors.New("journal segment vanished while loading")

// cachedSegment is a segment as read: decoded, or skipped with the reason.
// A decoded segment's access times (its Accessed records and the times of
// its Added ones) are not in seg but in the loader's fold.
type cachedSegment struct {
	seg *Segment // nil if skipped
	err error    // why it was skipped, naming the segment
}

// loader assembles an index from the snapshot and the journal segments it
// does not cover. Segments never change, so a loader keeps those it read by
// key and reads each only once: Live keeps one across refreshes.
type loader struct {
	store backend.Store
	log   *slog.Logger // skipped segments are logged once each
	cache map[string]*cachedSegment
	// acc: the access times of the segments in folded, which holds every
	// decoded segment in cache, and of segments forgotten since, which
	// cannot be taken out of it. Taking those again changes nothing: the
	// snapshot that covers them holds their times already, and objects
	// gone since drop them; only an object deleted and published again
	// without an access time of its own gets its old time back. acc is
	// emptied when folded is, and otherwise grows with the keys accessed
	// (about 60 bytes each), never with the records.
	acc    *accessFold
	folded map[string]bool
	memo   *loadMemo // the last index assembled, and from what
	// fetchers: segments downloaded at once; 0 means DefaultFetchConcurrency.
	fetchers int
	// known: every key the listings found under JournalPrefix (segments
	// and bad names), kept so that a listing after a key (see load) adds
	// to it; a whole listing replaces it.
	known map[string]backend.ObjectInfo
}

// loadMemo is what the last index was assembled from.
type loadMemo struct {
	base                    *Index
	todo, badNames, covered []string
	ix                      *Index
}

func newLoader(s backend.Store, log *slog.Logger) *loader {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &loader{store: s, log: log, cache: map[string]*cachedSegment{},
		acc: newAccessFold(), folded: map[string]bool{}}
}

// snapshotFunc reads the snapshot. When the store has none it returns an
// error wrapping ErrNoIndex.
type snapshotFunc func(ctx context.Context) (*Index, backend.ObjectInfo, error)

// loadResult is an assembled index and what it was assembled from.
type loadResult struct {
	ix       *Index
	base     *Index             // the snapshot, nil if none
	snap     backend.ObjectInfo // its Stat, if the snapshotFunc made one
	listed   bool               // the journal was listed (false: the store cannot list)
	whole    bool               // the listing was of the whole journal (not after a key)
	segments []backend.ObjectInfo
	applied  []string // keys of the segments applied on top of base, sorted
	skipped  []string // keys of the segments skipped as unreadable
}

// load lists the journal, then reads the snapshot (in that order: a
// compaction writes its snapshot before deleting what it folded, so every
// segment the listing misses is in a snapshot read after it), then applies
// the segments it does not cover, and locals (segments this process wrote,
// perhaps not listed yet), in key order. It starts over, with a whole
// listing, when a listed segment has vanished.
//
// after == "" lists the whole journal. Otherwise only the keys after it
// are listed and added to those the earlier listings of this loader
// found: the caller's promise that it knows every segment up to after.
// Segments deleted since (by a compaction) stay known; they are covered
// by the snapshot written before they were deleted, so they are neither
// fetched nor applied.
func (ld *loader) load(ctx context.Context, snap snapshotFunc, locals []*Segment, after string) (*loadResult, error) {
	var err error
	for range loadAttempts {
		var res *loadResult
		res, err = ld.attempt(ctx, snap, locals, after)
		if !errors.Is(err, errVanished) {
			return res, err
		}
		after = ""
	}
	return nil, fmt.Errorf("load index %s: %w (%d attempts: the journal changes faster than it can be read; is a compaction running without a grace period?)",
		ld.store.Location(), err, loadAttempts)
}

func (ld *loader) attempt(ctx context.Context, snap snapshotFunc, locals []*Segment, after string) (*loadResult, error) {
	res := &loadResult{}
	var badNames []string // sorted below
	known := map[string]backend.ObjectInfo{}
	if ld.known == nil {
		after = "" // nothing known to add to
	} else if after != "" {
		known = ld.known
	}
	err := backend.ListAfter(ctx, ld.store, JournalPrefix, after, func(oi backend.ObjectInfo) error {
		known[oi.Key] = oi
		return nil
	})
	switch {
	case err == nil:
		res.listed, res.whole = true, after == ""
		ld.known = known
	case errors.Is(err, backend.ErrNotSupported):
		// A store that cannot list (an HTTP mirror) has the snapshot only.
		ld.known, known = nil, nil
	default:
		// What this listing added is kept: those keys exist.
		return nil, fmt.Errorf("list index journal %s/%s: %w", ld.store.Location(), JournalPrefix, err)
	}
	for _, oi := range known {
		if _, ok := parseSegmentKey(oi.Key); ok {
			res.segments = append(res.segments, oi)
		} else {
			badNames = append(badNames, oi.Key)
		}
	}
	slices.SortFunc(res.segments, func(a, b backend.ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	slices.Sort(badNames)

	base, info, snapErr := snap(ctx)
	if snapErr != nil && !errors.Is(snapErr, ErrNoIndex) {
		return nil, snapErr
	}
	res.base, res.snap = base, info
	var baseCovered []string
	if base != nil {
		baseCovered = base.covered
	}
	isCovered := func(key string) bool { _, ok := slices.BinarySearch(baseCovered, key); return ok }

	// The segments to apply: listed or local, not covered, in key order.
	local := map[string]*Segment{}
	for _, seg := range locals {
		if !isCovered(seg.Key) {
			local[seg.Key] = seg
		}
	}
	var (
		todo  []string
		fetch []backend.ObjectInfo
	)
	for _, oi := range res.segments {
		if isCovered(oi.Key) {
			continue
		}
		todo = append(todo, oi.Key)
		switch {
		case ld.cache[oi.Key] != nil:
		case local[oi.Key] != nil:
			// Listed now: cache it, so that it is not downloaded once
			// the caller stops passing it.
			ld.cache[oi.Key] = &cachedSegment{seg: ld.foldLocal(local[oi.Key])}
		default:
			fetch = append(fetch, oi)
		}
	}
	listedTodo := len(todo)
	for key := range local {
		if _, ok := slices.BinarySearchFunc(res.segments, key, func(oi backend.ObjectInfo, k string) int {
			return strings.Compare(oi.Key, k)
		}); !ok {
			todo = append(todo, key)
		}
	}
	if len(todo) > listedTodo {
		slices.Sort(todo)
	}
	if err := ld.fetch(ctx, fetch); err != nil {
		return nil, err
	}

	var (
		segs    []*Segment
		skipped []error
	)
	for _, key := range badNames {
		c := ld.cache[key]
		if c == nil {
			c = &cachedSegment{err: fmt.Errorf("journal segment %s/%s: %w: not a segment name (ignored)", ld.store.Location(), key, ErrCorrupt)}
			ld.cache[key] = c
			ld.logSkipped(ctx, key, c.err)
		}
		skipped = append(skipped, c.err)
		res.skipped = append(res.skipped, key)
	}
	for _, key := range todo {
		if c := ld.cache[key]; c != nil && c.seg != nil {
			segs = append(segs, c.seg)
		} else if c != nil {
			skipped = append(skipped, c.err)
			res.skipped = append(res.skipped, key)
		} else {
			segs = append(segs, local[key])
		}
	}
	if base == nil && len(segs) == 0 {
		if snapErr == nil {
			snapErr = fmt.Errorf("load index %s: %w", snapshotLocation(ld.store), ErrNoIndex)
		}
		return nil, snapErr
	}
	res.applied = make([]string, len(segs))
	for i, seg := range segs {
		res.applied[i] = seg.Key
	}

	// Cover only segments that still exist (and local ones, which may not
	// be listed yet).
	covered := unionSorted(baseCovered, res.applied)
	if res.listed {
		exists := make(map[string]bool, len(res.segments)+len(local))
		for _, oi := range res.segments {
			exists[oi.Key] = true
		}
		for key := range local {
			exists[key] = true
		}
		covered = slices.DeleteFunc(covered, func(k string) bool { return !exists[k] })
	}

	// The same snapshot and segments as last time give the same index:
	// keep it rather than apply everything again.
	var ix *Index
	if m := ld.memo; m != nil && m.base == base && slices.Equal(m.todo, todo) &&
		slices.Equal(m.badNames, badNames) && slices.Equal(m.covered, covered) {
		ix = m.ix
	} else {
		ix = applyFolded(base, segs, ld.acc)
		ix.covered = covered
		ix.skipped = skipped
		ld.memo = &loadMemo{base: base, todo: todo, badNames: badNames, covered: covered, ix: ix}
	}

	if res.listed {
		// Forget segments that are gone or covered now.
		keep := make(map[string]bool, len(todo)+len(badNames))
		for _, k := range todo {
			keep[k] = true
		}
		for _, k := range badNames {
			keep[k] = true
		}
		for k := range ld.cache {
			if !keep[k] {
				delete(ld.cache, k)
				delete(ld.folded, k)
			}
		}
		if len(ld.folded) == 0 && len(ld.acc.at) > 0 {
			ld.acc = newAccessFold()
		}
	}
	res.ix = ix
	return res, nil
}

// foldLocal folds the access times of a segment this process wrote into
// the fold and returns a copy without them (the caller keeps seg).
func (ld *loader) foldLocal(seg *Segment) *Segment {
	b := &foldBatch{f: ld.acc}
	cp := *seg
	cp.Added = slices.Clone(seg.Added)
	for i := range cp.Added {
		b.add(cp.Added[i].Key, toSecs(cp.Added[i].Accessed))
		cp.Added[i].Accessed = time.Time{}
	}
	for _, a := range seg.Accessed {
		b.add(a.Key, toSecs(a.Time))
	}
	cp.Accessed = nil
	b.flush()
	ld.folded[seg.Key] = true
	return &cp
}

// fetch reads the segments into the cache, several at once (at most
// fetchBytes of them, by listed size, unless one is larger).
func (ld *loader) fetch(ctx context.Context, segs []backend.ObjectInfo) error {
	if len(segs) == 0 {
		return nil
	}
	got := make([]*cachedSegment, len(segs))
	sem := semaphore.NewWeighted(fetchBytes)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cmp.Or(ld.fetchers, DefaultFetchConcurrency))
	for i, oi := range segs {
		g.Go(func() error {
			w := min(max(oi.Size, 1), fetchBytes)
			if err := sem.Acquire(gctx, w); err != nil {
				return err
			}
			defer sem.Release(w)
			c, err := ld.read(gctx, oi.Key)
			got[i] = c
			return err
		})
	}
	err := g.Wait()
	// Keep what was read even when another segment failed: the next
	// attempt need not read it again.
	for i, c := range got {
		if c != nil {
			key := segs[i].Key
			ld.cache[key] = c
			if c.err != nil {
				ld.logSkipped(ctx, key, c.err)
			}
			if c.seg != nil {
				ld.folded[key] = true
			}
			if c.seg != nil && c.seg.Invalid > 0 {
				ld.log.LogAttrs(ctx, slog.LevelWarn, "index journal segment holds invalid equivalence records; they are ignored",
					slog.String("segment", key), slog.Int("records", c.seg.Invalid))
			}
		}
	}
	return err
}

// read downloads and decodes one segment and folds its access times into
// ld.acc (once it has decoded whole). A corrupt one is returned as
// skipped, not as an error: one writer's garbage must not keep everybody's
// index from loading.
func (ld *loader) read(ctx context.Context, key string) (*cachedSegment, error) {
	loc := ld.store.Location() + "/" + key
	rc, err := ld.store.Open(ctx, key, 0, -1)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", errVanished, loc)
	}
	if err != nil {
		return nil, fmt.Errorf("read journal segment %s: %w", loc, err)
	}
	defer rc.Close()
	b := &foldBatch{f: ld.acc}
	seg, err := decodeSegment(rc, b.add)
	if errors.Is(err, ErrCorrupt) {
		return &cachedSegment{err: fmt.Errorf("journal segment %s: %w", loc, err)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read journal segment %s: %w", loc, err)
	}
	for i := range seg.Added {
		b.add(seg.Added[i].Key, toSecs(seg.Added[i].Accessed))
		seg.Added[i].Accessed = time.Time{}
	}
	b.flush()
	name, _ := parseSegmentKey(key)
	seg.Key, seg.Writer, seg.Time = key, name.writer, time.Unix(0, name.time)
	return &cachedSegment{seg: seg}, nil
}

func (ld *loader) logSkipped(ctx context.Context, key string, err error) {
	ld.log.LogAttrs(ctx, slog.LevelWarn, "index journal segment skipped: its records are missing from the index",
		slog.String("segment", key), slog.Any("error", err))
}

// LoadAll reads the index of s: its snapshot, with the records of every
// journal segment the snapshot does not cover applied on top, in key
// (time) order. A store with segments but no snapshot has an index of the
// segments alone; one with neither gives an error wrapping ErrNoIndex; one
// that cannot list (an HTTP mirror) gives the snapshot alone.
//
// A corrupt segment (or one written by a newer sstatefs) is skipped: the
// index then lacks its records, and Sources().Skipped holds an error naming
// each such segment, for the caller to report. A damaged snapshot is an
// error wrapping ErrCorrupt. A segment deleted by a compaction while
// loading makes LoadAll start over (the new snapshot includes it), up to
// three times.
func LoadAll(ctx context.Context, s backend.Store) (*Index, error) {
	res, err := newLoader(s, nil).load(ctx, func(ctx context.Context) (*Index, backend.ObjectInfo, error) {
		ix, err := LoadSnapshot(ctx, s)
		return ix, backend.ObjectInfo{}, err
	}, nil, "")
	if err != nil {
		return nil, err
	}
	return res.ix, nil
}
