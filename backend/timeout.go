package backend

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// Timeout wraps a Store so that every call has a deadline: metadata calls
// (Stat, Delete, each List) must finish within D; Open must deliver its first
// reader within D and then keep making progress: every D a reader spends
// waiting must bring at least MinProgress bytes (or the end of the body), else
// the Read fails with an error wrapping context.DeadlineExceeded and the
// transfer is cancelled. A store trickling a byte now and then therefore
// cannot hold a reader for longer than D. Create and Put must finish within
// D plus the time the data needs at MinRate bytes per second.
type Timeout struct {
	Store
	D           time.Duration
	MinRate     int64 // bytes per second assumed for uploads; 0 means 1 MiB/s
	MinProgress int64 // bytes a read must bring per D; 0 means DefaultMinProgress
}

// DefaultMinProgress is what a download must bring per store timeout: 64 KiB
// per 10 s (the default timeout) is 6.4 KiB/s, far below any link that works
// (so a slow one is never cut off), and a small object ends before it, while
// a store that trickles bytes (1 every 2 s held readers for minutes) fails
// within one timeout.
const DefaultMinProgress = 64 << 10

// Unwrap returns the wrapped store.
func (t *Timeout) Unwrap() Store { return t.Store }

func (t *Timeout) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, t.D)
	defer cancel()
	return t.Store.Stat(ctx, key)
}

func (t *Timeout) Delete(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, t.D)
	defer cancel()
	return t.Store.Delete(ctx, key)
}

func (t *Timeout) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return t.watchList(ctx, fn, func(ctx context.Context, fn func(ObjectInfo) error) error {
		return t.Store.List(ctx, prefix, fn)
	})
}

var _ AfterLister = (*Timeout)(nil)

// ListAfter implements AfterLister with the deadlines of List.
func (t *Timeout) ListAfter(ctx context.Context, prefix, start string, fn func(ObjectInfo) error) error {
	return t.watchList(ctx, fn, func(ctx context.Context, fn func(ObjectInfo) error) error {
		return ListAfter(ctx, t.Store, prefix, start, fn)
	})
}

// watchList runs a listing bounded by progress rather than by a total
// deadline (a listing may be long): each page must come within D. The
// stores call fn per object, so a watchdog reset per call approximates that.
func (t *Timeout) watchList(ctx context.Context, fn func(ObjectInfo) error, list func(context.Context, func(ObjectInfo) error) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := newWatchdog(t.D, cancel)
	defer w.stop()
	return list(ctx, func(oi ObjectInfo) error {
		w.kick()
		err := fn(oi)
		w.kick()
		return err
	})
}

func (t *Timeout) uploadDeadline(size int64) time.Duration {
	rate := t.MinRate
	if rate <= 0 {
		rate = 1 << 20
	}
	if size < 0 {
		size = 0
	}
	return t.D + time.Duration(size/rate)*time.Second
}

func (t *Timeout) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, t.uploadDeadline(size))
	defer cancel()
	return t.Store.Create(ctx, key, r, size)
}

func (t *Timeout) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, t.uploadDeadline(size))
	defer cancel()
	return t.Store.Put(ctx, key, r, size)
}

func (t *Timeout) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := newWatchdog(t.D, cancel)
	rc, err := t.Store.Open(ctx, key, offset, length)
	if err != nil {
		w.stop()
		cancel()
		if ctx.Err() != nil && w.fired() {
			return nil, context.DeadlineExceeded
		}
		return nil, err
	}
	min := t.MinProgress
	if min <= 0 {
		min = DefaultMinProgress
	}
	r := &watchedReader{rc: rc, key: key, d: t.D, min: min, cancel: cancel}
	// From now on the deadline is the reader's windows, which count only
	// the time Reads wait.
	w.stop()
	if w.fired() {
		rc.Close()
		cancel()
		return nil, context.DeadlineExceeded
	}
	r.mu.Lock()
	r.end = time.Now().Add(t.D)
	r.t = time.AfterFunc(t.D, r.expire)
	r.mu.Unlock()
	return r, nil
}

// watchedReader enforces the minimum progress of a download: a window
// starts with a Read and lasts D; the store must deliver min bytes within
// it. The time the consumer spends between Reads does not count against
// the store: a window that runs out then ends without harm and the next
// Read starts a new one.
type watchedReader struct {
	rc     io.ReadCloser
	key    string
	d      time.Duration
	min    int64
	cancel context.CancelFunc
	t      *time.Timer

	mu      sync.Mutex // protects the fields below
	end     time.Time  // when the current window runs out
	got     int64      // bytes delivered in the current window
	lapsed  bool       // the window ran out while no Read was waiting
	reading bool       // a Read is waiting for the store
	fired   bool       // the window ran out during a Read: the transfer is cancelled
	closed  bool
}

// expire is the window's timer.
func (r *watchedReader) expire() {
	r.mu.Lock()
	if time.Now().Before(r.end) {
		// A firing of a window that was renewed meanwhile.
		r.mu.Unlock()
		return
	}
	fire := r.reading && !r.closed && !r.fired
	if fire {
		r.fired = true
	} else {
		r.lapsed = true
	}
	r.mu.Unlock()
	if fire {
		r.cancel()
	}
}

func (r *watchedReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.fired {
		r.mu.Unlock()
		return 0, r.stalled()
	}
	if r.lapsed {
		r.got, r.lapsed = 0, false
		r.renew()
	}
	r.reading = true
	r.mu.Unlock()

	n, err := r.rc.Read(p)

	r.mu.Lock()
	defer r.mu.Unlock()
	r.reading = false
	if r.fired && err != nil && err != io.EOF {
		return n, r.stalled()
	}
	r.got += int64(n)
	if r.got >= r.min && !r.fired {
		r.got = 0
		r.renew()
	}
	return n, err
}

// renew starts a new window; the caller holds mu.
func (r *watchedReader) renew() {
	r.end = time.Now().Add(r.d)
	r.t.Reset(r.d)
}

// stalled is the error of a window that ran out; the caller holds mu.
func (r *watchedReader) stalled() error {
	return fmt.Errorf("%s: the store sent %d bytes in %v, less than the minimum of %d: %w", r.key, r.got, r.d, r.min, context.DeadlineExceeded)
}

func (r *watchedReader) Close() error {
	r.mu.Lock()
	r.closed = true
	r.t.Stop()
	r.mu.Unlock()
	err := r.rc.Close()
	r.cancel()
	return err
}

// watchdog calls cancel when it has not been kicked for d.
type watchdog struct {
	d       time.Duration
	mu      sync.Mutex // protects t, done, didFire
	t       *time.Timer
	done    bool
	didFire bool
}

func newWatchdog(d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d}
	w.t = time.AfterFunc(d, func() {
		w.mu.Lock()
		fire := !w.done
		if fire {
			w.didFire = true
		}
		w.mu.Unlock()
		if fire {
			cancel()
		}
	})
	return w
}

func (w *watchdog) kick() {
	w.mu.Lock()
	if !w.done && !w.didFire {
		w.t.Reset(w.d)
	}
	w.mu.Unlock()
}

func (w *watchdog) stop() {
	w.mu.Lock()
	w.done = true
	w.t.Stop()
	w.mu.Unlock()
}

func (w *watchdog) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.didFire
}
