// Package view is the read side of a store seen as an SSTATE_DIR, with no
// kernel in sight: which names exist (answered from the index in memory
// while it is fresh, else by probing the store with a cache of the answers),
// their attributes, and their verified bytes through the disk cache. The FUSE
// layer (package fs) is a thin adapter over it.
package view

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
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
	// Store is the position in the view's stores (trust order) of the
	// store holding the bytes.
	Store int
	// Content is the whole object when the mount makes it (an archive's
	// .sig under a signature policy); nil for store objects.
	Content []byte
}

// Store is one store of a view. A view's stores are in trust order, the
// most trusted first: a name is the most trusted store's that has it.
type Store struct {
	Name   string        // in logs, metrics and status
	Store  backend.Store //
	Index  *index.Live   // its Current may be nil: a store without an index
	Probes *cache.StatCache
	// AnyEquivalences lets the hash equivalence records of less trusted
	// stores lead names to this store's objects (equivalences_from =
	// "any"); by default only this store's and more trusted stores'
	// records may.
	AnyEquivalences bool
	// OnAccess is told of every recorded access to this store's objects
	// (the publish store's journal batches them into its index). May be
	// nil: nothing is recorded in the other stores.
	OnAccess func(key string, t time.Time)
	// Policy is the store's signature policy; nil: none (objects are
	// shown whoever signed them, .sig files as stored).
	Policy *Policy
}

// Options configure a View.
type Options struct {
	// Stores in trust order, the most trusted first.
	Stores []Store
	// Store, Index, Probes and OnAccess describe a view of a single store
	// (added after Stores, named after the store's location).
	Store    backend.Store
	Index    *index.Live
	Probes   *cache.StatCache
	OnAccess func(key string, t time.Time)

	Cache  *cache.Cache
	Logger *slog.Logger
	// PrefetchWorkers bounds background prefetches; 0 disables Prefetch.
	PrefetchWorkers int
	// Now is the clock of the stores' back-off while they do not answer;
	// nil means time.Now.
	Now func() time.Time
}

// View answers questions about the stores' objects. Safe for concurrent
// use.
type View struct {
	stores    []*tier
	anyPolicy bool // some store has a Policy
	cache     *cache.Cache
	log       *slog.Logger
	now       func() time.Time

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
	if opt.Now == nil {
		opt.Now = time.Now
	}
	stores := opt.Stores
	if opt.Store != nil {
		stores = append(slices.Clip(stores), Store{Name: opt.Store.Location(), Store: opt.Store, Index: opt.Index, Probes: opt.Probes, OnAccess: opt.OnAccess})
	}
	v := &View{cache: opt.Cache, log: opt.Logger, now: opt.Now, touched: map[string]time.Time{}}
	for i, s := range stores {
		if s.Probes == nil {
			s.Probes = cache.NewStatCache(100_000, time.Minute, time.Minute)
		}
		if s.Index == nil {
			s.Index = index.NewLive(s.Store, index.LiveOptions{})
		}
		t := &tier{Store: s, pos: i}
		if s.Policy != nil {
			t.policy = newPolicyState()
			v.anyPolicy = true
		}
		v.stores = append(v.stores, t)
	}
	if opt.PrefetchWorkers > 0 {
		v.prefetch = make(chan Object, 10_000)
		v.prefetchWorkers = opt.PrefetchWorkers
	}
	return v
}

// Stat returns the object at key. A name is the most trusted store's that
// has it. The stores' indexes answer from memory; a name none of them has
// is absent while they are all fresh, else names of the sstate grammar are
// probed (cached) in the stores that cannot answer from memory, in trust
// order, and other names do not exist. A store that does not answer is
// left out (its names are absent) until it answers again.
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
	// Under a signature policy an archive's .sig is the mount's: the
	// signatures it holds for the archive bitbake would get.
	isSig := v.anyPolicy && strings.HasSuffix(key, ".sig")
	if isSig {
		if arch, _, err := v.stat(ctx, strings.TrimSuffix(key, ".sig")); err == nil && v.stores[arch.Store].Policy != nil {
			o, err := v.presentSig(ctx, key, arch)
			return o, false, err
		}
	}
	// The indexes, in trust order, from memory. A store that does not
	// answer yields to a less trusted one holding the name unless the
	// object is in the cache.
	best, fallback := -1, -1
	var fb Object
	eqs := false
	for _, t := range v.stores {
		ix := t.Index.Current()
		if ix == nil {
			continue
		}
		eqs = eqs || ix.NumEquivalences() > 0
		if best >= 0 {
			continue
		}
		if io, ok := ix.Lookup(key); ok {
			obj := objectOf(io, io.Key, t.pos)
			if t.Policy != nil && (isSig || !v.visible(ctx, t, obj)) {
				continue
			}
			if t.down(v.now()) && !v.Cached(obj) {
				if fallback < 0 {
					fallback, fb = t.pos, obj
				}
				continue
			}
			best, o = t.pos, obj
		}
	}
	// Resolution through hash equivalence costs a parse and a lookup per
	// store: only when an index has equivalences at all, and only a
	// resolution more trusted than the name itself wins.
	if eqs {
		if name, err := sstate.Parse(key); err == nil {
			limit := best
			if limit < 0 {
				limit = len(v.stores)
			}
			if r, ok := v.resolve(ctx, name, limit); ok {
				r.Key = key
				v.resolved.Add(1)
				v.stores[r.Store].resolved.Add(1)
				return r, false, nil
			}
		}
	}
	if best >= 0 {
		v.stores[best].hits.Add(1)
		return o, false, nil
	}
	if fallback >= 0 {
		// only a store that does not answer has it: try it anyway
		v.stores[fallback].hits.Add(1)
		return fb, false, nil
	}
	if _, err := sstate.Parse(key); err != nil {
		return Object{}, false, errNotExist
	}
	// The stores that cannot answer from memory, probed in trust order.
	var firstErr error
	answered := false
	for _, t := range v.stores {
		if t.Index.Current() != nil && t.Index.Fresh() {
			answered = true
			continue
		}
		if t.down(v.now()) || (isSig && t.Policy != nil) {
			continue // absent until it answers again; the .sig is the mount's
		}
		obj, present, err := v.probe(ctx, t, key)
		switch {
		case err == nil && present && t.Policy != nil && !v.visible(ctx, t, obj):
			answered = true
		case err == nil && present:
			return obj, true, nil
		case err == nil:
			answered = true
		case ctx.Err() != nil:
			return Object{}, true, err
		default:
			t.failed(v, err)
			if firstErr == nil {
				firstErr = err
			}
		}
		probed = true
	}
	if !answered && firstErr != nil {
		return Object{}, probed, firstErr
	}
	if probed {
		return Object{}, true, notExist(key)
	}
	return Object{}, false, errNotExist
}

// probe asks store t whether key exists, through its cache of answers.
func (v *View) probe(ctx context.Context, t *tier, key string) (Object, bool, error) {
	if info, present, known := t.Probes.Get(key); known {
		if !present {
			return Object{}, false, nil
		}
		return Object{Key: key, Size: info.Size, ModTime: info.ModTime, Source: key, Store: t.pos}, true, nil
	}
	v.probeCount.Add(1)
	t.probes.Add(1)
	oi, err := t.Store.Store.Stat(ctx, key)
	if errors.Is(err, backend.ErrNotExist) {
		t.Probes.Absent(key)
		t.answered(v)
		return Object{}, false, nil
	}
	if err != nil {
		t.probeErrors.Add(1)
		return Object{}, false, err
	}
	t.answered(v)
	t.probeHits.Add(1)
	t.Probes.Present(key, cache.Info{Size: oi.Size, ModTime: oi.ModTime})
	return Object{Key: key, Size: oi.Size, ModTime: oi.ModTime, Source: key, Store: t.pos}, true, nil
}

func objectOf(o index.Object, key string, store int) Object {
	return Object{Key: key, Size: o.Size, ModTime: o.ModTime, SHA256: o.SHA256, Chunks: o.Chunks, Source: o.Key, Store: store}
}

// resolve answers a name whose hash is a taskhash with a recorded unihash
// by the object of that unihash (same task, same companion), if one
// exists: the same bytes under the name bitbake asked for. Nothing is
// copied.
//
// Every store's records count. A resolution is only as trusted as the less
// trusted of the store holding the record and the store holding the
// object, and a store's objects are reached through the records of less
// trusted stores only if it accepts them (AnyEquivalences): otherwise a
// less trusted store could redirect a name to an object of its choice.
// The most trusted resolution wins, if it is more trusted than limit.
func (v *View) resolve(ctx context.Context, name sstate.Name, limit int) (Object, bool) {
	var best Object
	found := false
	for _, rt := range v.stores {
		if rt.pos >= limit {
			break // every resolution through it is at most as trusted
		}
		ix := rt.Index.Current()
		if ix == nil || ix.NumEquivalences() == 0 {
			continue
		}
		e, ok := ix.ByTaskhash(name.Hash)
		if !ok || e.Unihash == name.Hash || len(e.Unihash) < 4 {
			continue
		}
		target := name
		target.Hash = e.Unihash
		key := target.String()
		for _, ot := range v.stores {
			trust := max(ot.pos, rt.pos)
			if trust >= limit {
				break
			}
			if ot.pos < rt.pos && !ot.AnyEquivalences {
				continue
			}
			oix := ot.Index.Current()
			if oix == nil {
				continue
			}
			if o, ok := oix.Lookup(key); ok {
				obj := objectOf(o, "", ot.pos)
				if ot.Policy != nil {
					obj.Key = key
					if !v.visible(ctx, ot, obj) {
						continue
					}
					obj.Key = ""
				}
				best, limit, found = obj, trust, true
				break
			}
		}
	}
	return best, found
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
	// Every store must be able to say "nothing there" from memory (a store
	// that does not answer has nothing for now).
	fromMemory := true
	now := v.now()
	for _, t := range v.stores {
		ix := t.Index.Current()
		if ix != nil && ix.IsDir(dir) {
			return true
		}
		if ix == nil || ix.NumEquivalences() > 0 || !t.Index.Fresh() {
			fromMemory = fromMemory && t.down(now)
		}
	}
	if fromMemory {
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

// ReadDir lists what the stores' indexes know directly in dir, each name
// once, sorted. A store without an index cannot be listed: it adds
// nothing.
func (v *View) ReadDir(dir string) []index.Entry {
	var out []index.Entry
	seen := map[string]bool{}
	for _, t := range v.stores {
		ix := t.Index.Current()
		if ix == nil {
			continue
		}
		for _, e := range ix.Children(dir) {
			if seen[e.Name] || Hidden(Join(dir, e.Name)) {
				continue
			}
			seen[e.Name] = true
			out = append(out, e)
		}
	}
	if len(v.stores) > 1 {
		slices.SortFunc(out, func(a, b index.Entry) int { return strings.Compare(a.Name, b.Name) })
	}
	return out
}

// Open returns a handle on the object's content: the verified cache file,
// or a download that serves bytes as they arrive and verifies them as they
// stream (large objects with parallel ranged reads).
//
// Under a signature policy an archive's signatures are verified over its
// bytes before anything is served (the whole object is downloaded first);
// an archive they fail for is hidden (ErrHidden).
func (v *View) Open(ctx context.Context, o Object) (cache.Handle, error) {
	if t := v.stores[o.Store]; t.Policy != nil && t.Policy.Require > 0 && o.Content == nil && isArchive(o.Key) {
		if err := v.verify(ctx, t, o); err != nil {
			return nil, err
		}
	}
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
	t := v.stores[o.Store]
	if o.Content != nil {
		// made by the mount: cached by its digest, served from memory
		content := o.Content
		return cache.Object{
			ID: cache.IDFor(o.SHA256, "", o.Size, o.ModTime), Size: o.Size, SHA256: o.SHA256, Name: o.Key,
			Fetch: func(_ context.Context, off, n int64) (io.ReadCloser, error) {
				end := int64(len(content))
				if n >= 0 && off+n < end {
					end = off + n
				}
				return io.NopCloser(bytes.NewReader(content[off:end])), nil
			},
		}
	}
	return cache.Object{
		// an object with a digest is cached once, whatever store it came from
		ID:     cache.IDFor(o.SHA256, t.Store.Store.Location()+"/"+src, o.Size, o.ModTime),
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
			rc, err := t.Store.Store.Open(ctx, src, off, n)
			if err != nil {
				if !errors.Is(err, backend.ErrNotExist) && ctx.Err() == nil {
					t.fetchErrors.Add(1)
					t.failed(v, err)
				}
				return nil, err
			}
			return &countingReader{ReadCloser: rc, n: &t.fetched}, nil
		},
	}
}

// countingReader counts the bytes read through it into n.
type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
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
	if rec := v.stores[o.Store].OnAccess; rec != nil {
		src := o.Source
		if src == "" {
			src = o.Key
		}
		rec(src, t)
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
func (v *View) Forget(key string) {
	for _, t := range v.stores {
		t.Probes.Forget(key)
	}
}
