package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Handle is an open object: its verified content, or a download in progress
// whose bytes are served as they arrive.
type Handle interface {
	// ReadAt reads like io.ReaderAt: it fills p unless the object ends
	// first. While the object downloads it waits for the bytes (until ctx
	// ends), and serves only verified bytes: those of a chunk whose digest
	// matched (Object.Chunks), else only once the whole object matched its
	// digest. The final byte is held back until the whole object has
	// verified, so a reader of a corrupt object gets an error, never a
	// clean end of file.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// ReadFile waits, as ReadAt does, for the n bytes at off and returns
	// the file that holds them and how many there are (fewer only at the
	// end of the object, 0 there), for a reader that copies them itself
	// (splice). The file stays valid until Close.
	ReadFile(ctx context.Context, off int64, n int) (*os.File, int, error)
	// File is the verified cache file, or nil while the object downloads
	// (for FUSE passthrough and kernel page caching).
	File() *os.File
	// Wait blocks until the content is whole and verified (at once for a
	// cached entry) and returns why the download failed, if it did.
	Wait() error
	Close() error
}

// Streaming parameters: objects larger than a chunk (Options.ChunkSize,
// default 8 MiB) are fetched with up to chunkWorkers parallel ranged GETs.
// The pieces verified before they are served are the object's own
// (Object.ChunkSize, the index's 1 MiB): the verifier follows the
// contiguous prefix, so the two sizes need not agree.
const (
	defaultChunkSize = 8 << 20
	chunkWorkers     = 4
)

// Buffers of the fetch and hash loops, reused: a restore downloads
// thousands of objects, and fresh buffers cost an allocation, zeroing and
// garbage collection each.
var (
	fetchBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
	hashBufs  = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
)

// ErrFetchFailed wraps download failures seen by streaming readers.
var ErrFetchFailed = errors.New("download failed")

// fileHandle is a complete, verified entry.
type fileHandle struct {
	f    *os.File
	size int64
}

func (h fileHandle) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return h.f.ReadAt(p, off)
}

func (h fileHandle) ReadFile(_ context.Context, off int64, n int) (*os.File, int, error) {
	return h.f, int(max(0, min(int64(n), h.size-off))), nil
}
func (h fileHandle) File() *os.File { return h.f }
func (h fileHandle) Wait() error    { return nil }
func (h fileHandle) Close() error   { return h.f.Close() }

// download is one object being fetched into a temp file, shared by every
// reader that opens it meanwhile.
type download struct {
	obj    Object
	cancel context.CancelFunc // stops the fetch (Close)
	tmp    *os.File           // read and written at offsets; stays valid after rename
	size   int64
	chunk  int64 // chunk size

	mu       sync.Mutex // protects written, verified, done, err, refs
	cond     *sync.Cond
	written  []int64 // bytes written so far into each chunk (sequentially)
	verified int64   // length of the prefix that may be served (see verifier.servable)
	done     bool    // finished: err tells how
	err      error
	refs     int           // open readers plus the downloader itself
	finished chan struct{} // closed when done is set
}

func (d *download) chunks() int {
	n := int((d.size + d.chunk - 1) / d.chunk)
	return max(n, 1)
}

func (d *download) chunkRange(i int) (start, length int64) {
	start = int64(i) * d.chunk
	return start, min(d.chunk, d.size-start)
}

// OpenStream returns a handle on the object at once: a cached entry, or a
// download that this call starts (or joins) and whose bytes are readable as
// they arrive, verified as they stream. Large objects are fetched with
// parallel ranged GETs. Nothing unverified is ever filed in the cache.
func (c *Cache) OpenStream(ctx context.Context, obj Object) (Handle, error) {
	if !validID(obj.ID) {
		return nil, fmt.Errorf("cache: invalid id %q for %s", obj.ID, obj.Name)
	}
	if c.isClosed() {
		return nil, fmt.Errorf("%s: %w", obj.Name, ErrClosed)
	}
	for attempt := 0; ; attempt++ {
		if f, err := c.openCached(obj); f != nil || err != nil {
			if err != nil {
				return nil, err
			}
			return fileHandle{f, obj.Size}, nil
		}
		if testHookMissed != nil && attempt == 0 {
			testHookMissed()
		}
		// A download may have been filed since openCached looked: then it
		// is read from the cache rather than downloaded again (once; a
		// second time the entry was dropped as corrupt, and is fetched).
		d, err := c.startDownload(obj, attempt > 0)
		if err != nil {
			return nil, err
		}
		if d != nil {
			return &streamHandle{c: c, d: d}, nil
		}
	}
}

// testHookMissed, when set by a test, runs between OpenStream's look at the
// cache and the start of a download.
var testHookMissed func()

// startDownload returns the running download of obj, starting it if needed,
// with a reference taken for the caller. It returns nil (and no error) when
// no download runs but obj is in the cache, filed since the caller looked,
// unless always is set.
func (c *Cache) startDownload(obj Object, always bool) (*download, error) {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%s: %w", obj.Name, ErrClosed)
	}
	if d, ok := c.downloads[obj.ID]; ok {
		d.mu.Lock()
		d.refs++
		d.mu.Unlock()
		return d, nil
	}
	// A download is removed from downloads (under dlMu) only after it was
	// filed, so this sees its entry.
	if !always && c.Has(obj.ID) {
		return nil, nil
	}
	if err := c.backoff.check(obj); err != nil {
		return nil, err
	}
	c.misses.Add(1)
	tmp, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "fetch-*")
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if obj.Size > 0 {
		if err := tmp.Truncate(obj.Size); err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	// The download's own deadline: other callers may wait for it too.
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	d := &download{obj: obj, cancel: cancel, tmp: tmp, size: obj.Size, chunk: c.chunkSize, refs: 2, finished: make(chan struct{})}
	d.cond = sync.NewCond(&d.mu)
	d.written = make([]int64, d.chunks())
	c.downloads[obj.ID] = d
	c.busy.Add(1)
	go c.run(ctx, d)
	return d, nil
}

func (c *Cache) isClosed() bool {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return c.closed
}

// run fetches, verifies and files a download, then drops its reference.
func (c *Cache) run(ctx context.Context, d *download) {
	defer c.busy.Done()
	defer d.cancel()
	start := time.Now()
	c.makeRoom(d.size)
	err := c.fetchChunks(ctx, d)
	if err == nil {
		err = c.file(d)
	}
	c.fetched.Add(d.verifiedLen())
	if c.onFetch != nil {
		c.onFetch(d.verifiedLen(), time.Since(start), err)
	}
	c.dlMu.Lock()
	closed := c.closed
	c.dlMu.Unlock()
	switch {
	case err != nil && closed:
		// stopped by Close: not the store's failure, nothing to hold back
		err = fmt.Errorf("%w: %w", ErrClosed, err)
		c.log.Debug("download stopped by close", "object", d.obj.Name, "error", err)
		os.Remove(d.tmp.Name())
	case err != nil:
		if errors.Is(err, ErrCorrupt) {
			c.corrupted.Add(1)
		}
		c.log.Warn("download failed", "object", d.obj.Name, "error", err)
		os.Remove(d.tmp.Name())
	}
	// The outcome is recorded before a reader learns it, so that its next
	// open is answered from the back-off, not by this finished download.
	c.dlMu.Lock()
	if !closed {
		c.backoff.done(d.obj, err)
	}
	delete(c.downloads, d.obj.ID)
	c.dlMu.Unlock()
	d.mu.Lock()
	d.done, d.err = true, err
	d.cond.Broadcast()
	d.mu.Unlock()
	close(d.finished)
	d.release()
}

func (d *download) verifiedLen() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.verified
}

func (d *download) release() {
	d.mu.Lock()
	d.refs--
	last := d.refs == 0
	d.mu.Unlock()
	if last {
		d.tmp.Close()
	}
}

// fetchChunks downloads every chunk (in order, a few at once) while a hasher
// follows the contiguous prefix; it returns when all is written and hashed.
func (c *Cache) fetchChunks(ctx context.Context, d *download) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := d.chunks()
	if n == 1 {
		// one request: hash the bytes as they arrive, no read back
		return c.fetchChunk(ctx, d, 0, true, nil)
	}
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	errs := make(chan error, chunkWorkers+1)
	var wg sync.WaitGroup
	workers := min(chunkWorkers, n)
	// The first chunk goes first: its request gets the connection that is
	// already open and, for a moment, all the bandwidth, so that the
	// reader's first bytes come as soon as they can; the other workers
	// start once its answer has begun.
	first := make(chan struct{})
	var firstOnce sync.Once
	begun := func() { firstOnce.Do(func() { close(first) }) }
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w > 0 {
				select {
				case <-first:
				case <-ctx.Done():
				}
			}
			for i := range next {
				if err := c.fetchChunk(ctx, d, i, false, begun); err != nil {
					errs <- err
					cancel()
					d.mu.Lock()
					d.cond.Broadcast() // wake the hasher
					d.mu.Unlock()
					return
				}
			}
		}()
	}
	herr := d.hash(ctx)
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	return herr
}

// fetchChunk writes chunk i from a ranged read, reporting progress. With
// inline (an object of one chunk) it also hashes the bytes as they arrive
// and checks the digest, instead of leaving that to d.hash. begun, if not
// nil, is called once the read has been answered (or has failed).
func (c *Cache) fetchChunk(ctx context.Context, d *download, i int, inline bool, begun func()) error {
	start, length := d.chunkRange(i)
	if d.size == 0 {
		length = 0
	}
	ask := length
	if start+length == d.size {
		ask = -1 // the last chunk reads to the end: an object that grew is noticed
	}
	rc, err := d.obj.Fetch(ctx, start, ask)
	if begun != nil {
		begun()
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	var v *verifier
	if inline {
		v = newVerifier(d.obj)
	}
	bp := fetchBufs.Get().(*[]byte)
	defer fetchBufs.Put(bp)
	buf := *bp
	var got int64
	for got < length {
		k, err := rc.Read(buf[:min(int64(len(buf)), length-got)])
		if k > 0 {
			if werr := c.writeAt(d, buf[:k], start+got); werr != nil {
				return werr
			}
			var verr error
			if v != nil {
				verr = v.write(buf[:k])
			}
			got += int64(k)
			d.mu.Lock()
			d.written[i] = got
			if v != nil {
				d.verified = max(d.verified, v.servable())
			}
			d.cond.Broadcast()
			d.mu.Unlock()
			if verr != nil {
				return verr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("fetch %s: %w", d.obj.Name, err)
		}
	}
	if got != length {
		return fmt.Errorf("fetch %s: %w: chunk at %d: got %d bytes, want %d", d.obj.Name, ErrCorrupt, start, got, length)
	}
	// An object longer than the index says is corrupt too.
	if start+length == d.size {
		var one [1]byte
		if k, _ := rc.Read(one[:]); k > 0 {
			return fmt.Errorf("fetch %s: %w: longer than %d bytes", d.obj.Name, ErrCorrupt, d.size)
		}
	}
	if inline {
		if err := v.finish(); err != nil {
			return err
		}
		d.mu.Lock()
		d.verified = d.size
		d.cond.Broadcast()
		d.mu.Unlock()
	}
	return nil
}

// hash follows the written prefix, verifying it from the temp file, and
// checks the digest at the end.
func (d *download) hash(ctx context.Context) error {
	v := newVerifier(d.obj)
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	buf := *bp
	var pos int64
	for pos < d.size {
		i := int(pos / d.chunk)
		cs, _ := d.chunkRange(i)
		d.mu.Lock()
		for cs+d.written[i] <= pos && ctx.Err() == nil {
			d.cond.Wait()
		}
		end := cs + d.written[i]
		d.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return err
		}
		for pos < end {
			k, err := d.tmp.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			if k > 0 {
				if verr := v.write(buf[:k]); verr != nil {
					return verr
				}
			}
			pos += int64(k)
			if err != nil && !(err == io.EOF && pos == end) {
				return fmt.Errorf("cache: %w", err)
			}
		}
		d.mu.Lock()
		d.verified = max(d.verified, v.servable())
		d.cond.Broadcast()
		d.mu.Unlock()
	}
	if err := v.finish(); err != nil {
		return err
	}
	d.mu.Lock()
	d.verified = d.size
	d.mu.Unlock()
	return nil
}

// file moves a verified download into the cache.
func (c *Cache) file(d *download) error {
	final := c.path(d.obj.ID)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.lru.Peek(d.obj.ID); ok {
		c.lru.Remove(d.obj.ID)
		c.bytes -= old
	}
	// Make room before the object appears, so that the cache never holds
	// more than its bound, not even while one is filed (readers may have
	// had its last byte already).
	c.bytes += d.size
	c.evictLocked("")
	if err := os.Rename(d.tmp.Name(), final); err != nil {
		c.bytes -= d.size
		return fmt.Errorf("cache: %w", err)
	}
	c.lru.Add(d.obj.ID, d.size)
	c.verified[d.obj.ID] = true
	return nil
}

// streamHandle reads a download as it progresses.
type streamHandle struct {
	c      *Cache
	d      *download
	closed sync.Once
}

func (h *streamHandle) File() *os.File { return nil }

func (h *streamHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	f, k, err := h.ReadFile(ctx, off, len(p))
	if err != nil {
		return 0, err
	}
	if k == 0 {
		return 0, io.EOF
	}
	n, rerr := f.ReadAt(p[:k], off)
	if rerr == nil && off+int64(n) >= h.d.size {
		rerr = io.EOF
	}
	if rerr == io.EOF && off+int64(n) < h.d.size {
		rerr = io.ErrUnexpectedEOF
	}
	return n, rerr
}

func (h *streamHandle) ReadFile(ctx context.Context, off int64, n int) (*os.File, int, error) {
	d := h.d
	// wake the waits below when the caller is interrupted
	stop := context.AfterFunc(ctx, func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	defer stop()
	want := min(off+int64(n), d.size)
	if off >= d.size {
		want = d.size
	}
	d.mu.Lock()
	// A short read would look like the end of the file to the kernel, so
	// wait for the whole range; the last byte comes only after the digest
	// has matched (hash holds it back).
	for d.verified < want && !d.done && ctx.Err() == nil {
		d.cond.Wait()
	}
	avail, done, err := d.verified, d.done, d.err
	d.mu.Unlock()
	if cerr := ctx.Err(); cerr != nil && avail < want {
		return nil, 0, cerr
	}
	if off >= d.size {
		if avail >= d.size || (done && err == nil) {
			return d.tmp, 0, nil // verified whole: the end
		}
		if err == nil {
			err = errors.New("download ended early")
		}
		return nil, 0, fmt.Errorf("%w: %w", ErrFetchFailed, err)
	}
	if avail < want {
		if err == nil {
			err = errors.New("download ended early")
		}
		return nil, 0, fmt.Errorf("%w: %w", ErrFetchFailed, err)
	}
	return d.tmp, int(want - off), nil
}

// wait blocks until the download is finished or ctx ends.
func (d *download) wait(ctx context.Context) error {
	select {
	case <-d.finished:
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *streamHandle) Wait() error { return h.d.wait(context.Background()) }

func (h *streamHandle) Close() error {
	h.closed.Do(h.d.release)
	return nil
}

// verifier checks the bytes of a download in order against the object's
// digest and chunk digests, and says how long a prefix may be served: no
// reader ever gets a byte that has not verified, where anything can be
// verified.
type verifier struct {
	name  string
	size  int64
	want  [32]byte
	whole hash.Hash // nil: no digest to check (a store without an index)
	chunk hash.Hash // nil: no chunk digests; nothing is served before the end
	sums  [][32]byte
	csize int64
	pos   int64 // bytes written
	good  int64 // end of the chunks that verified
}

func newVerifier(obj Object) *verifier {
	v := &verifier{name: obj.Name, size: obj.Size, want: obj.SHA256}
	if obj.SHA256 == ([32]byte{}) {
		return v
	}
	v.whole = sha256.New()
	// Chunk digests count only if they cover the object exactly; an
	// object of one chunk is verified whole.
	if n := int64(len(obj.Chunks)); n > 1 && obj.ChunkSize > 0 && (obj.Size-1)/obj.ChunkSize+1 == n {
		v.chunk, v.sums, v.csize = sha256.New(), obj.Chunks, obj.ChunkSize
	}
	return v
}

// write hashes the next bytes; it fails (ErrCorrupt) when they complete a
// chunk whose digest does not match.
func (v *verifier) write(p []byte) error {
	if v.whole != nil {
		v.whole.Write(p)
	}
	if v.chunk == nil {
		v.pos += int64(len(p))
		return nil
	}
	for len(p) > 0 && v.pos < v.size { // callers never write past the size
		k := int(v.pos / v.csize)
		end := min(int64(k+1)*v.csize, v.size)
		n := int(min(int64(len(p)), end-v.pos))
		v.chunk.Write(p[:n])
		v.pos += int64(n)
		p = p[n:]
		if v.pos == end {
			if got := [32]byte(v.chunk.Sum(nil)); got != v.sums[k] {
				return fmt.Errorf("fetch %s: %w: chunk %d (bytes %d to %d): sha256 %x, want %x",
					v.name, ErrCorrupt, k, int64(k)*v.csize, end, got, v.sums[k])
			}
			v.chunk.Reset()
			v.good = end
		}
	}
	return nil
}

// servable is the length of the prefix that may be served so far. The last
// byte always waits for finish, so that no reader reaches a clean end of
// file before the whole digest has matched.
func (v *verifier) servable() int64 {
	switch {
	case v.whole == nil:
		return max(0, min(v.pos, v.size-1)) // nothing to verify against
	case v.chunk == nil:
		return 0
	}
	return max(0, min(v.good, v.size-1))
}

// finish checks the digest of all the bytes written.
func (v *verifier) finish() error {
	if v.whole == nil {
		return nil
	}
	if got := [32]byte(v.whole.Sum(nil)); got != v.want {
		return fmt.Errorf("fetch %s: %w: sha256 %x, want %x", v.name, ErrCorrupt, got, v.want)
	}
	return nil
}
