package backend

import (
	"context"
	"io"
	"sync"
	"time"
)

// Timeout wraps a Store so that every call has a deadline: metadata calls
// (Stat, Delete, each List) must finish within D; Open must deliver its first
// reader within D and then keep making progress: a Read that waits longer
// than D for data fails, and the transfer is cancelled. Create and Put must
// finish within D plus the time the data needs at MinRate bytes per second.
type Timeout struct {
	Store
	D       time.Duration
	MinRate int64 // bytes per second assumed for uploads; 0 means 1 MiB/s
}

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
	// A listing may be long; it is bounded by progress: each page must come
	// within D. The stores call fn per object, so a watchdog reset per call
	// approximates that.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := newWatchdog(t.D, cancel)
	defer w.stop()
	return t.Store.List(ctx, prefix, func(oi ObjectInfo) error {
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
	return &watchedReader{rc: rc, w: w, cancel: cancel}, nil
}

type watchedReader struct {
	rc     io.ReadCloser
	w      *watchdog
	cancel context.CancelFunc
}

func (r *watchedReader) Read(p []byte) (int, error) {
	r.w.kick()
	n, err := r.rc.Read(p)
	r.w.kick()
	if err != nil && err != io.EOF && r.w.fired() {
		return n, context.DeadlineExceeded
	}
	return n, err
}

func (r *watchedReader) Close() error {
	r.w.stop()
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
