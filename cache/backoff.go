package cache

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// ErrBackedOff is wrapped, together with the error of the last attempt, by
// the answer to an open of an object whose download failed recently: it is
// not attempted again until its back-off has passed.
var ErrBackedOff = errors.New("download failed recently, not retried yet")

// Back-off after a failed download, per object. Without it every retry of
// the kernel (or of the reader) starts a new download: one sha256sum of a
// corrupt 40 MiB object caused 51 downloads, and a stopped store stretched
// one EIO to 4 store timeouts.
//
//   - A download that failed (timeout, network, store error) is retried
//     after 5 s, doubling with each further failure up to 2 min: a store that
//     restarts or a network that comes back is used again within seconds to
//     minutes, and a dead store costs one timeout per back-off, not per read.
//   - Content that failed verification does not repair itself: someone has
//     to re-upload the object. It is retried after 30 s, doubling up to
//     10 min: each attempt downloads the whole object again, and a repaired
//     store still recovers within 10 min without a restart.
//
// The count of failures (and so the length of the next back-off) is
// forgotten after a success, or once an object has not failed for longer
// than its longest back-off.
const (
	failBackoffMin    = 5 * time.Second
	failBackoffMax    = 2 * time.Minute
	corruptBackoffMin = 30 * time.Second
	corruptBackoffMax = 10 * time.Minute
	// maxBackoffs bounds the failures remembered (about 200 bytes each).
	maxBackoffs = 4096
)

// Backoff describes an object whose downloads are held back.
type Backoff struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Reason   string    `json:"reason"`   // the error of the last attempt
	Corrupt  bool      `json:"corrupt"`  // the last attempt failed verification
	Failures int       `json:"failures"` // consecutive failed attempts
	Until    time.Time `json:"until"`    // no new attempt before
}

type failure struct {
	name    string
	err     error
	corrupt bool
	n       int
	until   time.Time
}

// backoffs remembers failed downloads by cache id.
type backoffs struct {
	now     func() time.Time
	refused atomic.Int64 // opens answered from a back-off

	mu sync.Mutex // protects m
	m  map[string]*failure
}

func newBackoffs(now func() time.Time) *backoffs {
	return &backoffs{now: now, m: map[string]*failure{}}
}

// check returns an error wrapping ErrBackedOff and the last failure when
// obj may not be downloaded yet, nil when it may.
func (b *backoffs) check(obj Object) error {
	now := b.now()
	b.mu.Lock()
	f, ok := b.m[obj.ID]
	if !ok || !now.Before(f.until) {
		b.mu.Unlock()
		return nil
	}
	wait, n, last := f.until.Sub(now), f.n, f.err
	b.mu.Unlock()
	b.refused.Add(1)
	return fmt.Errorf("%s: %w (%d failed, next attempt in %s): %w", obj.Name, ErrBackedOff, n, wait.Round(time.Second), last)
}

// done records the outcome of a download of obj: a success forgets its
// failures, a failure starts or lengthens its back-off.
func (b *backoffs) done(obj Object, err error) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		delete(b.m, obj.ID)
		return
	}
	f, ok := b.m[obj.ID]
	if !ok || f.forgotten(now) {
		if !ok && len(b.m) >= maxBackoffs {
			b.pruneLocked(now)
		}
		f = &failure{}
		b.m[obj.ID] = f
	}
	f.name, f.err, f.corrupt = obj.Name, err, errors.Is(err, ErrCorrupt)
	f.n++
	f.until = now.Add(f.delay())
}

// delay is the back-off after the failure f records.
func (f *failure) delay() time.Duration {
	lo, hi := failBackoffMin, failBackoffMax
	if f.corrupt {
		lo, hi = corruptBackoffMin, corruptBackoffMax
	}
	d := lo
	for i := 1; i < f.n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// forgotten: the object has not failed for longer than its longest back-off.
func (f *failure) forgotten(now time.Time) bool {
	hi := failBackoffMax
	if f.corrupt {
		hi = corruptBackoffMax
	}
	return now.After(f.until.Add(hi))
}

// pruneLocked makes room for one more entry: it drops the forgotten ones
// and, if none is, the one whose back-off ends first.
func (b *backoffs) pruneLocked(now time.Time) {
	var first string
	for id, f := range b.m {
		if f.forgotten(now) {
			delete(b.m, id)
			continue
		}
		if first == "" || f.until.Before(b.m[first].until) {
			first = id
		}
	}
	if len(b.m) >= maxBackoffs {
		delete(b.m, first)
	}
}

// count returns the number of objects held back now.
func (b *backoffs) count() int {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, f := range b.m {
		if now.Before(f.until) {
			n++
		}
	}
	return n
}

// list returns the objects held back now, the one released first first.
func (b *backoffs) list() []Backoff {
	now := b.now()
	b.mu.Lock()
	out := []Backoff{}
	for id, f := range b.m {
		if now.Before(f.until) {
			out = append(out, Backoff{ID: id, Name: f.name, Reason: f.err.Error(), Corrupt: f.corrupt, Failures: f.n, Until: f.until})
		}
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	return out
}

// BackedOff lists the objects whose downloads are held back after a
// failure, with why and until when (for status).
func (c *Cache) BackedOff() []Backoff { return c.backoff.list() }
