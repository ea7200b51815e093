// Package cache owns the local disk cache of object bytes: bounded in size,
// evicted least recently used first, kept across restarts, and verified: an
// entry is only ever served after its content matched the digest it is filed
// under, so a reader never gets bytes that did not verify.
//
// Layout under Dir:
//
//	objects/<id[0:2]>/<id>   complete, verified entries
//	tmp/                      downloads in progress (removed at start)
//
// An id is the object's SHA-256 in hex when the index knows it; objects of
// stores without an index use an id derived from where they came from
// (see IDFor) and are checked by size only.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/sstatefs/sstatefs/index"
)

// ErrCorrupt is wrapped by errors about content that did not verify.
var ErrCorrupt = errors.New("content does not match its digest")

// ErrClosed is returned by a cache after Close, and wrapped by the error of
// the downloads Close stopped.
var ErrClosed = errors.New("cache closed")

// Options configure a Cache.
type Options struct {
	Dir      string
	MaxBytes int64 // bound on the bytes of complete entries; 0 means unbounded
	Logger   *slog.Logger
	// FetchTimeout bounds one download, independent of the caller that
	// started it (other callers may be waiting for the same object).
	FetchTimeout time.Duration
	// ChunkSize is the size of the parallel ranged reads of large objects
	// (default 8 MiB).
	ChunkSize int64
	// OnFetch, if set, is told of every download: bytes, duration, error.
	OnFetch func(bytes int64, d time.Duration, err error)
	// Now is the clock of the back-off of failed downloads (default
	// time.Now); tests move it instead of sleeping.
	Now func() time.Time
}

// Stats are counters for status and metrics.
type Stats struct {
	Bytes, Entries                     int64
	Hits, Misses, Evictions, Corrupted int64
	FetchedBytes                       int64
	// BackedOff is the number of objects whose downloads are held back
	// after a failure now; Refused counts the opens answered at once with
	// ErrBackedOff meanwhile.
	BackedOff, Refused int64
	// DiskSize and DiskFree describe the file system of the cache, which
	// bounds it too (0 when it cannot be told).
	DiskSize, DiskFree int64
}

// Cache is the disk cache. Safe for concurrent use.
type Cache struct {
	dir       string
	max       int64
	log       *slog.Logger
	timeout   time.Duration
	onFetch   func(int64, time.Duration, error)
	chunkSize int64
	backoff   *backoffs

	// Lock order: dlMu before mu.
	dlMu      sync.Mutex           // protects downloads, closed and the Add of busy
	downloads map[string]*download // running downloads by id
	closed    bool                 // set by Close: nothing new starts
	// busy counts the goroutines that may still write into dir (downloads)
	// and the Adopts under way: Close waits for them, so nothing writes
	// there once it has returned (a restart, or a test removing the
	// directory, would otherwise race with them).
	busy sync.WaitGroup

	mu        sync.Mutex                    // protects lru, bytes, verified, lastUse, persisted
	lru       *simplelru.LRU[string, int64] // id -> size, oldest first
	bytes     int64                         // sum of sizes in lru
	verified  map[string]bool               // entries checked since this process started
	lastUse   map[string]time.Time          // last use of an entry in this process
	persisted map[string]time.Time          // last use written to the entry's file mtime

	hits, misses, evictions, corrupted, fetched atomic.Int64
}

// Open opens (creating if needed) the cache in opt.Dir, indexes what is
// already there in order of last use and evicts down to the bound.
func Open(opt Options) (*Cache, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.ChunkSize <= 0 {
		opt.ChunkSize = defaultChunkSize
	}
	if opt.FetchTimeout <= 0 {
		opt.FetchTimeout = 10 * time.Minute
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	c := &Cache{dir: opt.Dir, max: opt.MaxBytes, log: opt.Logger, timeout: opt.FetchTimeout, onFetch: opt.OnFetch, chunkSize: opt.ChunkSize, backoff: newBackoffs(opt.Now), verified: map[string]bool{}, lastUse: map[string]time.Time{}, persisted: map[string]time.Time{}, downloads: map[string]*download{}}
	lru, err := simplelru.NewLRU[string, int64](1<<62, nil)
	if err != nil {
		return nil, err
	}
	c.lru = lru
	if err := os.RemoveAll(filepath.Join(c.dir, "tmp")); err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.dir, err)
	}
	for _, d := range []string{"objects", "tmp"} {
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("cache %s: %w", c.dir, err)
		}
	}
	type entry struct {
		id   string
		size int64
		used time.Time
	}
	var entries []entry
	root := filepath.Join(c.dir, "objects")
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		id := d.Name()
		if filepath.Base(filepath.Dir(p)) != shard(id) {
			return os.Remove(p) // not ours
		}
		entries = append(entries, entry{id, fi.Size(), fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.dir, err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].used.Before(entries[j].used) })
	for _, e := range entries {
		c.lru.Add(e.id, e.size)
		c.bytes += e.size
	}
	c.warnOversized()
	c.mu.Lock()
	c.evictLocked("")
	c.mu.Unlock()
	return c, nil
}

func shard(id string) string {
	if len(id) < 2 {
		return "__"
	}
	return id[:2]
}

func (c *Cache) path(id string) string {
	return filepath.Join(c.dir, "objects", shard(id), id)
}

// IDFor returns the cache id of an object: its digest when known, otherwise
// a name derived from its origin, size and mtime, so a changed object gets a
// new entry.
func IDFor(digest [32]byte, origin string, size int64, mtime time.Time) string {
	if digest != ([32]byte{}) {
		return hex.EncodeToString(digest[:])
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d", origin, size, mtime.UnixNano())
	return "u" + hex.EncodeToString(h.Sum(nil))[:63]
}

// Object describes what to fetch and how to check it.
type Object struct {
	ID     string   // from IDFor
	Size   int64    // expected size
	SHA256 [32]byte // zero: check the size only
	Name   string   // for messages: the object's key
	// ChunkSize and Chunks: the SHA-256 digests of the object's pieces of
	// ChunkSize bytes, in order (the last piece may be shorter), such as
	// the index records for large objects. A piece is served once it has
	// verified, while the rest downloads; without them (or with a number
	// that does not fit Size) nothing is served before the whole object
	// has verified. Without SHA256, nothing can be verified.
	ChunkSize int64
	Chunks    [][32]byte
	// Fetch opens length bytes of the object from offset in the store
	// (length < 0: to the end).
	Fetch func(ctx context.Context, offset, length int64) (io.ReadCloser, error)
}

// Open returns a read-only file holding the object's verified content,
// fetching it first if it is not cached (see OpenStream for reading while it
// downloads). Concurrent calls for one object share one download. The
// caller closes the file; eviction while it is open does not disturb it.
func (c *Cache) Open(ctx context.Context, obj Object) (*os.File, error) {
	h, err := c.OpenStream(ctx, obj)
	if err != nil {
		return nil, err
	}
	if f := h.File(); f != nil {
		return f, nil
	}
	sh := h.(*streamHandle)
	defer sh.Close()
	if err := sh.d.wait(ctx); err != nil {
		return nil, err
	}
	f, err := c.openCached(obj)
	if f == nil && err == nil {
		err = fmt.Errorf("%s: evicted right after download (cache too small?)", obj.Name)
	}
	return f, err
}

// Has reports whether the object is in the cache (verified or not).
func (c *Cache) Has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Contains(id)
}

// openCached returns the cached entry, verifying it once per process; a
// corrupt entry is dropped and (nil, nil) returned so it is fetched again.
func (c *Cache) openCached(obj Object) (*os.File, error) {
	c.mu.Lock()
	_, ok := c.lru.Get(obj.ID)
	verified := c.verified[obj.ID]
	c.mu.Unlock()
	if !ok {
		return nil, nil
	}
	p := c.path(obj.ID)
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		c.drop(obj.ID)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", p, err)
	}
	if !verified {
		if err := check(f, obj); err != nil {
			f.Close()
			c.corrupted.Add(1)
			c.log.LogAttrs(context.Background(), slog.LevelWarn, "dropping corrupt cache entry",
				slog.String("object", obj.Name), slog.String("error", err.Error()))
			c.drop(obj.ID)
			return nil, nil
		}
		c.mu.Lock()
		c.verified[obj.ID] = true
		c.mu.Unlock()
	}
	c.hits.Add(1)
	// Record the last use on disk for the LRU order after a restart, at
	// most once a minute per entry: a metadata write per open costs more
	// than the open itself on a warm restore.
	now := time.Now()
	c.mu.Lock()
	stale := now.Sub(c.persisted[obj.ID]) > time.Minute
	if stale {
		c.persisted[obj.ID] = now
	}
	c.lastUse[obj.ID] = now
	c.mu.Unlock()
	if stale {
		_ = os.Chtimes(p, now, now)
	}
	return f, nil
}

// check verifies size and digest of an entry read back from disk.
func check(f *os.File, obj Object) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != obj.Size {
		return fmt.Errorf("%w: %d bytes, want %d", ErrCorrupt, fi.Size(), obj.Size)
	}
	if obj.SHA256 == ([32]byte{}) {
		return nil
	}
	sum, _, err := index.Sum(io.NewSectionReader(f, 0, fi.Size()))
	if err != nil {
		return err
	}
	if sum != obj.SHA256 {
		return fmt.Errorf("%w: sha256 %x, want %x", ErrCorrupt, sum, obj.SHA256)
	}
	return nil
}

func (c *Cache) drop(id string) {
	c.mu.Lock()
	if size, ok := c.lru.Peek(id); ok {
		c.lru.Remove(id)
		c.bytes -= size
	}
	delete(c.verified, id)
	c.mu.Unlock()
	os.Remove(c.path(id))
}

// evictLocked removes least recently used entries until the bound holds
// and the margin of free disk space is kept (see makeRoomLocked), sparing
// keep (the entry just added, which a caller is about to open).
func (c *Cache) evictLocked(keep string) {
	defer c.makeRoomLocked(0, keep)
	if c.max <= 0 {
		return
	}
	for c.bytes > c.max && c.lru.Len() > 0 {
		id, size, _ := c.lru.GetOldest()
		if id == keep {
			if c.lru.Len() == 1 {
				return
			}
			c.lru.Get(keep) // move to front, evict the next oldest
			continue
		}
		c.evictOneLocked(id, size)
	}
}

// evictOneLocked removes the entry id of size bytes.
func (c *Cache) evictOneLocked(id string, size int64) {
	c.lru.Remove(id)
	c.bytes -= size
	delete(c.verified, id)
	c.evictions.Add(1)
	if err := os.Remove(c.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("cache eviction", "id", id, "error", err)
	}
}

// Close stops the downloads under way (their readers get an error wrapping
// ErrClosed) and waits for them, so that nothing writes into the cache
// directory once it has returned; then it writes the last uses not yet on
// disk, so that the LRU order survives a clean restart exactly (after a
// crash it is off by at most a minute). Opens after Close fail with
// ErrClosed. Close may be called more than once.
func (c *Cache) Close() error {
	c.dlMu.Lock()
	c.closed = true
	for _, d := range c.downloads {
		d.cancel()
	}
	c.dlMu.Unlock()
	c.busy.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, t := range c.lastUse {
		if t.After(c.persisted[id]) && c.lru.Contains(id) {
			_ = os.Chtimes(c.path(id), t, t)
			c.persisted[id] = t
		}
	}
	return nil
}

// Stats returns current counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	s := Stats{Bytes: c.bytes, Entries: int64(c.lru.Len())}
	c.mu.Unlock()
	s.Hits, s.Misses = c.hits.Load(), c.misses.Load()
	s.Evictions, s.Corrupted = c.evictions.Load(), c.corrupted.Load()
	s.FetchedBytes = c.fetched.Load()
	s.BackedOff = int64(c.backoff.count())
	s.Refused = c.backoff.refused.Load()
	s.DiskSize, s.DiskFree, _ = diskSpace(c.dir)
	return s
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// validID guards against ids that would escape the cache directory.
func validID(id string) bool {
	return id != "" && !strings.ContainsAny(id, "/\x00") && id != "." && id != ".."
}

// Adopt moves a local file with the object's content into the cache (a
// rename: the file must be on the cache's file system), after checking its
// size and digest. The file is gone from path afterwards on success; on a
// mismatch it is left where it is and ErrCorrupt returned.
func (c *Cache) Adopt(path string, obj Object) error {
	if !validID(obj.ID) {
		return fmt.Errorf("cache: invalid id %q for %s", obj.ID, obj.Name)
	}
	c.dlMu.Lock()
	if c.closed {
		c.dlMu.Unlock()
		return fmt.Errorf("adopt %s: %w", obj.Name, ErrClosed)
	}
	c.busy.Add(1)
	c.dlMu.Unlock()
	defer c.busy.Done()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = check(f, obj)
	f.Close()
	if err != nil {
		return fmt.Errorf("adopt %s: %w", obj.Name, err)
	}
	final := c.path(obj.ID)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return err
	}
	if err := os.Rename(path, final); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.lru.Peek(obj.ID); ok {
		c.bytes -= old
	}
	c.lru.Add(obj.ID, obj.Size)
	c.bytes += obj.Size
	c.verified[obj.ID] = true
	c.evictLocked(obj.ID)
	return nil
}
