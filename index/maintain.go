package index

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/sstate"
)

// InitEmpty gives an empty, writable store an empty, complete snapshot, so
// that absent names are answered from memory from the first build on, and
// reloads live. A store with objects but no snapshot needs Build (which
// hashes every object); until then misses probe the store. Problems are
// logged, not returned: the index is an optimisation, never a requirement.
func InitEmpty(ctx context.Context, store backend.Store, live *Live, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if ix := live.Current(); ix != nil && ix.Sources().Snapshot {
		return
	}
	empty := true
	errStop := errors.New("stop")
	err := store.List(ctx, "", func(oi backend.ObjectInfo) error {
		if backend.IsMeta(oi.Key) {
			return nil
		}
		empty = false
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		log.Warn("cannot list the store to initialise its index", "store", store.Location(), "error", err)
		return
	}
	if !empty {
		log.Warn("the store has objects but no index snapshot: absent names cost a request each until you run `sstatefs index build`", "store", store.Location())
		return
	}
	if err := Save(ctx, store, New(nil, time.Now())); err != nil {
		log.Warn("writing an empty index", "store", store.Location(), "error", err)
		return
	}
	if err := live.LoadOnce(ctx); err != nil {
		log.Warn("reloading the index", "error", err)
		return
	}
	log.Info("empty store: wrote an empty index", "store", store.Location())
}

// compactMinSegments is how many journal segments on top of the snapshot
// make CompactEvery's timer fold them.
const compactMinSegments = 64

// Defaults of CompactTriggers. A mount's start-up reads every segment the
// snapshot does not cover, a GET each (BENCHMARKS.md, "Start-up and
// refresh under many writers": 2,000 segments take about 3.5 s at 100 ms
// RTT with 64 at once), so the journal is folded long before it reaches
// that; 64 MiB of segments is about half a million records.
// The configuration's defaults (index.compact_segments, index.compact_bytes)
// are these.
const (
	DefaultCompactSegments = 1000
	DefaultCompactBytes    = 64 << 20
	// compactTriggerJitter bounds the random wait between a refresh that
	// finds a threshold reached and the attempt, so that the mounts of a
	// farm, which all see it within one refresh interval, do not all ask
	// for the lock at once; whoever tries after a compaction has finished
	// sees the new snapshot on its refresh and does not try.
	compactTriggerJitter = 30 * time.Second
)

// CompactTriggers says when CompactEvery folds the journal.
type CompactTriggers struct {
	// Every: a check on a jittered timer (50%..150% of it), folding once
	// 64 segments are applied; 0 disables the timer.
	Every time.Duration
	// Segments, Bytes: after each refresh of the Live, a compaction is
	// tried when this many segments, or this many bytes of segments, are
	// applied on top of the snapshot; 0 disables the trigger (see
	// DefaultCompactSegments and DefaultCompactBytes). After a triggered
	// compaction fails, the triggers wait for the timer.
	Segments int
	Bytes    int64
}

// CompactEvery folds the journal into a new snapshot, until ctx ends,
// when the triggers say so; with many mounts, whichever gets the lock
// (see Compact) does it and the others skip. opt is passed to Compact.
func CompactEvery(ctx context.Context, store backend.Store, live *Live, t CompactTriggers, opt CompactOptions) {
	c := &compactor{store: store, live: live, t: t, opt: opt, after: time.After,
		rand: func(n time.Duration) time.Duration { return time.Duration(rand.Int64N(int64(n))) }}
	c.run(ctx)
}

// compactor is CompactEvery's loop, with its clock and randomness
// replaceable by tests, and a hook that sees each decision.
type compactor struct {
	store backend.Store
	live  *Live
	t     CompactTriggers
	opt   CompactOptions
	after func(time.Duration) <-chan time.Time
	rand  func(time.Duration) time.Duration // in [0, n)
	hook  func(compactEvent)                // nil: none
}

// compactEvent is what the compactor decided, for tests.
type compactEvent int

const (
	eventBelow     compactEvent = iota // a refresh found no threshold reached
	eventAttempted                     // Compact ran (whatever its outcome)
	eventGone                          // after the jitter, the threshold was no longer reached
	eventPaused                        // a threshold was reached, but the last triggered attempt failed
)

func (c *compactor) note(e compactEvent) {
	if c.hook != nil {
		c.hook(e)
	}
}

func (c *compactor) run(ctx context.Context) {
	log := cmp.Or(c.opt.Logger, slog.New(slog.DiscardHandler))
	segs, size := c.t.Segments, c.t.Bytes
	over := func() (string, bool) {
		n, b := c.live.journalSize()
		switch {
		case segs > 0 && n >= segs:
			return fmt.Sprintf("%d segments", n), true
		case size > 0 && b >= size:
			return fmt.Sprintf("%d bytes of segments", b), true
		}
		return "", false
	}
	var timer <-chan time.Time
	if c.t.Every > 0 {
		// jitter: 50%..150% of the interval, so mounts do not line up
		timer = c.after(c.t.Every/2 + c.rand(c.t.Every))
	}
	refreshed := c.live.refreshed
	// paused: a triggered compaction failed (not for the lock); the
	// triggers wait for the timer rather than fail, and warn, at every
	// refresh.
	paused := false
	for {
		var why string
		select {
		case <-ctx.Done():
			return
		case <-timer:
			timer = c.after(c.t.Every/2 + c.rand(c.t.Every))
			paused = false
			if ix := c.live.Current(); ix == nil || ix.Sources().Applied < compactMinSegments {
				continue
			}
			why = "interval"
		case <-refreshed:
			reason, ok := over()
			if !ok {
				c.note(eventBelow)
				continue
			}
			if paused {
				c.note(eventPaused)
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-c.after(c.rand(compactTriggerJitter)):
			}
			// Another mount may have compacted meanwhile, and a
			// refresh of this one seen it.
			if reason, ok = over(); !ok {
				c.note(eventGone)
				continue
			}
			why = reason
		}
		res, err := Compact(ctx, c.store, c.opt)
		c.note(eventAttempted)
		switch {
		case errors.Is(err, ErrCompactionRunning):
		case err != nil:
			log.Warn("index compaction failed", "trigger", why, "error", err)
			paused = why != "interval" && timer != nil
		default:
			log.Info("index compacted", "trigger", why, "segments_folded", res.Folded, "segments_deleted", res.Deleted, "objects", res.Objects)
		}
	}
}

// HasObjectOfHash reports whether an sstate object named by hash (a
// unihash) is in the index, at the top level of the store layout or under
// any NATIVELSBSTRING directory (ab/cd/…:HASH_task…).
func (ix *Index) HasObjectOfHash(hash string) bool {
	if ix == nil || len(hash) < 4 || !sstate.IsHash(hash) {
		return false
	}
	sub := hash[0:2] + "/" + hash[2:4]
	dirs := []string{sub}
	for _, e := range ix.Children("") {
		if e.IsDir && sstate.IsNativeDir(e.Name) {
			dirs = append(dirs, e.Name+"/"+sub)
		}
	}
	needle := ":" + hash + "_"
	for _, d := range dirs {
		for _, e := range ix.Children(d) {
			if !e.IsDir && strings.Contains(e.Name, needle) {
				return true
			}
		}
	}
	return false
}
