// Package view is the read side of a store seen as an SSTATE_DIR, with no
// kernel in sight: which names exist (answered from the index in memory
// while it is fresh, else by probing the store with a cache of the answers),
// their attributes, and their verified bytes through the disk cache. The FUSE
// layer (package fs) is a thin adapter over it.
package view

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/sstate"
)

// Object is a store object as the mount presents it.
type Object struct {
	Key     string
	Size    int64
	ModTime time.Time
	SHA256  [32]byte // zero when the store has no index
	// Chunks are the index's digests of the object's index.ChunkSize
	// pieces (large objects only; nil if none were recorded).
	Chunks [][32]byte
	// Source is the store key holding the bytes: Key, or for a name
	// resolved through hash equivalence, the object of its unihash.
	Source string
}

// Options configure a View.
type Options struct {
	Store  backend.Store
	Index  *index.Live // its Current may be nil: a store without an index
	Cache  *cache.Cache
	Probes *cache.StatCache // answers of probes, for stores without a fresh index
	Logger *slog.Logger
	// OnAccess is told of every recorded access (the journal batches them
	// into the index). May be nil.
	OnAccess func(key string, t time.Time)
	// PrefetchWorkers bounds background prefetches; 0 disables Prefetch.
	PrefetchWorkers int
}

// View answers questions about the store's objects. Safe for concurrent use.
type View struct {
	store  backend.Store
	index  *index.Live
	cache  *cache.Cache
	probes *cache.StatCache
	log    *slog.Logger
	access func(key string, t time.Time)

	mu      sync.Mutex           // protects touched
	touched map[string]time.Time // access times recorded by utimensat/touch

	hits, misses, probeCount, probeHits, probeErrors, resolved atomic.Int64

	prefetch                    chan Object // queued prefetches; nil when disabled
	prefetchWorkers             int
	prefetched, prefetchDropped atomic.Int64
}

// Stats are lookup counters for metrics.
type Stats struct {
	Hits            int64 // present, answered from the index
	Misses          int64 // absent: from memory (fresh index, cached probe, not an sstate name) or by a probe
	Probes          int64 // store probes (no fresh index)
	ProbeHits       int64 // probes that found the object
	ProbeErrors     int64 // probes that failed (store unreachable)
	Resolved        int64 // names resolved to another object through hash equivalence
	Prefetched      int64 // objects fetched ahead of an open
	PrefetchDropped int64 // prefetch requests dropped because the queue was full
}

// Stats returns the lookup counters.
func (v *View) Stats() Stats {
	return Stats{Hits: v.hits.Load(), Misses: v.misses.Load(), Probes: v.probeCount.Load(), Resolved: v.resolved.Load(), Prefetched: v.prefetched.Load(), PrefetchDropped: v.prefetchDropped.Load(), ProbeHits: v.probeHits.Load(), ProbeErrors: v.probeErrors.Load()}
}

// New returns a View.
func New(opt Options) *View {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Probes == nil {
		opt.Probes = cache.NewStatCache(100_000, time.Minute, time.Minute)
	}
	v := &View{store: opt.Store, index: opt.Index, cache: opt.Cache, probes: opt.Probes, log: opt.Logger, access: opt.OnAccess, touched: map[string]time.Time{}}
	if opt.PrefetchWorkers > 0 {
		v.prefetch = make(chan Object, 10_000)
		v.prefetchWorkers = opt.PrefetchWorkers
	}
	return v
}

// Store is the store the view reads.
func (v *View) Store() backend.Store { return v.store }

// Stat returns the object at key. An absent name answers ErrNotExist from
// memory while the index is fresh; otherwise names of the sstate grammar are
// probed in the store (cached), and other names do not exist.
func (v *View) Stat(ctx context.Context, key string) (Object, error) {
	o, probed, err := v.stat(ctx, key)
	switch {
	case err == nil && probed:
		v.probeHits.Add(1)
	case err == nil:
		v.hits.Add(1)
	case errors.Is(err, backend.ErrNotExist):
		v.misses.Add(1)
	default:
		v.probeErrors.Add(1)
	}
	return o, err
}

func (v *View) stat(ctx context.Context, key string) (o Object, probed bool, err error) {
	if Hidden(key) {
		return Object{}, false, notExist(key)
	}
	ix := v.index.Current()
	if ix != nil {
		if o, ok := ix.Lookup(key); ok {
			return Object{Key: o.Key, Size: o.Size, ModTime: o.ModTime, SHA256: o.SHA256, Chunks: o.Chunks, Source: o.Key}, false, nil
		}
	}
	// Resolution through hash equivalence costs a parse and a lookup: only
	// when the index has equivalences at all.
	if ix != nil && ix.NumEquivalences() > 0 {
		if name, err := sstate.Parse(key); err == nil {
			if o, ok := v.resolve(ix, name); ok {
				o.Key = key
				v.resolved.Add(1)
				return o, false, nil
			}
		}
	}
	if ix != nil && v.index.Fresh() {
		return Object{}, false, errNotExist
	}
	if _, err := sstate.Parse(key); err != nil {
		return Object{}, false, errNotExist
	}
	if info, present, known := v.probes.Get(key); known {
		if !present {
			return Object{}, false, notExist(key)
		}
		return Object{Key: key, Size: info.Size, ModTime: info.ModTime, Source: key}, false, nil
	}
	v.probeCount.Add(1)
	oi, err := v.store.Stat(ctx, key)
	if errors.Is(err, backend.ErrNotExist) {
		v.probes.Absent(key)
		return Object{}, true, err
	}
	if err != nil {
		return Object{}, true, err
	}
	v.probes.Present(key, cache.Info{Size: oi.Size, ModTime: oi.ModTime})
	return Object{Key: key, Size: oi.Size, ModTime: oi.ModTime, Source: key}, true, nil
}

// resolve answers a name whose hash is a taskhash with a recorded unihash by
// the object of that unihash (same task, same companion), if it exists: the
// same bytes under the name bitbake asked for. Nothing is copied.
func (v *View) resolve(ix *index.Index, name sstate.Name) (Object, bool) {
	e, ok := ix.ByTaskhash(name.Hash)
	if !ok || e.Unihash == name.Hash || len(e.Unihash) < 4 {
		return Object{}, false
	}
	target := name
	target.Hash = e.Unihash
	o, ok := ix.Lookup(target.String())
	if !ok {
		return Object{}, false
	}
	return Object{Size: o.Size, ModTime: o.ModTime, SHA256: o.SHA256, Chunks: o.Chunks, Source: o.Key}, true
}

// Hidden reports whether key is the store's metadata (backend.MetaPrefix,
// or a name below it), which the mount never shows nor lets anyone create.
// It is on the path of every lookup: no allocation.
func Hidden(key string) bool {
	return key == backend.MetaPrefix[:len(backend.MetaPrefix)-1] || backend.IsMeta(key)
}

// Join is the key of name in directory dir ("" is the root).
func Join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func notExist(key string) error { return fmt.Errorf("%s: %w", key, backend.ErrNotExist) }

// errNotExist answers the misses of the hot path (thousands per build)
// without building an error per name.
var errNotExist = fmt.Errorf("answered from the index: %w", backend.ErrNotExist)

// IsDir reports whether dir ("" is the root) is a directory of the store:
// one the index knows, or one of the SSTATE_DIR layout: ab/, ab/cd/,
// <NATIVELSBSTRING>/, <NATIVELSBSTRING>/ab/ and .../ab/cd/. A layout
// directory the index does not know is absent while the index is fresh and
// has no hash equivalences: nothing can be in it then, and the kernel,
// told so once, answers every name below it without asking (bitbake
// checks three names for every object it wants, and in a store of a few
// thousand objects the directory of a missing one is almost always
// missing too). With equivalences a name in any directory may resolve to
// an object elsewhere, and without a fresh index names are probed: then
// every layout directory exists.
func (v *View) IsDir(dir string) bool {
	if dir == "" {
		return true
	}
	if Hidden(dir) {
		return false
	}
	ix := v.index.Current()
	if ix != nil && ix.IsDir(dir) {
		return true
	}
	if ix != nil && ix.NumEquivalences() == 0 && v.index.Fresh() {
		return false
	}
	// Otherwise every directory of the SSTATE_DIR layout exists, also where
	// the index has no object: a name resolved through hash equivalence
	// lives in the directory of its taskhash.
	parts := strings.Split(dir, "/")
	if sstate.IsNativeDir(parts[0]) {
		parts = parts[1:]
	}
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if !sstate.IsHexDir(p) {
			return false
		}
	}
	return true
}

// ReadDir lists what the index knows directly in dir. A store without an
// index cannot be listed: it answers nothing.
func (v *View) ReadDir(dir string) []index.Entry {
	ix := v.index.Current()
	if ix == nil {
		return nil
	}
	var out []index.Entry
	for _, e := range ix.Children(dir) {
		if Hidden(Join(dir, e.Name)) {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Open returns a handle on the object's content: the verified cache file,
// or a download that serves bytes as they arrive and verifies them as they
// stream (large objects with parallel ranged reads).
func (v *View) Open(ctx context.Context, o Object) (cache.Handle, error) {
	return v.cache.OpenStream(ctx, v.cacheObject(o))
}

// Prefetch queues the object to be fetched into the cache in the
// background by a bounded pool of workers (Options.PrefetchWorkers). It
// returns at once; when the queue is full the request is dropped.
func (v *View) Prefetch(o Object) {
	if v.prefetch == nil {
		return
	}
	select {
	case v.prefetch <- o:
	default:
		v.prefetchDropped.Add(1)
	}
}

// Fetch fetches the object into the cache and waits for it (for the
// prefetch command).
func (v *View) Fetch(ctx context.Context, o Object) error {
	f, err := v.cache.Open(ctx, v.cacheObject(o))
	if err != nil {
		return err
	}
	return f.Close()
}

// Cached reports whether the object is in the disk cache.
func (v *View) Cached(o Object) bool { return v.cache.Has(v.cacheObject(o).ID) }

// RunPrefetch runs the prefetch workers until ctx ends.
func (v *View) RunPrefetch(ctx context.Context) {
	if v.prefetch == nil {
		return
	}
	var wg sync.WaitGroup
	for range v.prefetchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case o := <-v.prefetch:
					if v.cache.Has(v.cacheObject(o).ID) {
						continue
					}
					if err := v.Fetch(ctx, o); err != nil && ctx.Err() == nil {
						v.log.Debug("prefetch failed", "object", o.Key, "error", err)
					} else if err == nil {
						v.prefetched.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
}

func (v *View) cacheObject(o Object) cache.Object {
	src := o.Source
	if src == "" {
		src = o.Key
	}
	return cache.Object{
		ID:     cache.IDFor(o.SHA256, v.store.Location()+"/"+src, o.Size, o.ModTime),
		Size:   o.Size,
		SHA256: o.SHA256,
		Name:   src,
		// each chunk is served once verified, large objects streaming
		ChunkSize: index.ChunkSize,
		Chunks:    o.Chunks,
		Fetch: func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
			if o.SHA256 != ([32]byte{}) {
				// the cache verifies the digest: stores may skip their own
				// checksums of the response
				ctx = backend.WithSHA256(ctx, o.SHA256)
			}
			return v.store.Open(ctx, src, off, n)
		},
	}
}

// Touch records an access to an object (bitbake's utimensat/touch on
// objects it uses): shown as its mtime here, and reported for the object
// that holds the bytes. The content and the store copy never change.
func (v *View) Touch(o Object, t time.Time) {
	v.mu.Lock()
	if t.After(v.touched[o.Key]) {
		v.touched[o.Key] = t
	}
	v.mu.Unlock()
	if v.access != nil {
		src := o.Source
		if src == "" {
			src = o.Key
		}
		v.access(src, t)
	}
}

// ModTime is the time the mount shows for an object: its store mtime, or
// the last recorded access if later (retention scripts rely on it).
func (v *View) ModTime(o Object) time.Time {
	v.mu.Lock()
	t, ok := v.touched[o.Key]
	v.mu.Unlock()
	if ok && t.After(o.ModTime) {
		return t
	}
	return o.ModTime
}

// Forget drops cached probe answers for key (it was created or removed
// through the mount).
func (v *View) Forget(key string) { v.probes.Forget(key) }
