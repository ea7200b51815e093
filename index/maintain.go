package index

import (
	"context"
	"errors"
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
// make CompactEvery fold them.
const compactMinSegments = 64

// CompactEvery folds the journal into a new snapshot now and then, until
// ctx ends, when enough segments have accumulated; with many mounts,
// whichever gets the lock does it and the others skip. opt is passed to
// Compact.
func CompactEvery(ctx context.Context, store backend.Store, live *Live, every time.Duration, opt CompactOptions) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for {
		// jitter: 50%..150% of the interval, so mounts do not line up
		d := every/2 + time.Duration(rand.Int64N(int64(every)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		if ix := live.Current(); ix == nil || ix.Sources().Applied < compactMinSegments {
			continue
		}
		res, err := Compact(ctx, store, opt)
		switch {
		case errors.Is(err, ErrCompactionRunning):
		case err != nil:
			log.Warn("index compaction failed", "error", err)
		default:
			log.Info("index compacted", "segments_folded", res.Folded, "segments_deleted", res.Deleted, "objects", res.Objects)
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
