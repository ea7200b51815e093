package index

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

// LiveOptions tunes a Live.
type LiveOptions struct {
	// Interval between refreshes; 0 means 30 s.
	Interval time.Duration
	// MaxAge: the index counts as fresh while the last successful load is
	// younger than this; 0 means 3*Interval.
	MaxAge time.Duration
	// Logger receives refresh failures (once per change of state) and
	// loads of new snapshots; nil discards them.
	Logger *slog.Logger
	// Now is the clock freshness is measured with; nil means time.Now.
	Now func() time.Time
}

// Live holds the current index of a store for the mount and refreshes it
// in the background. Lookups (Current, Fresh) never block on a refresh:
// they read one atomic pointer.
type Live struct {
	store    backend.Store
	interval time.Duration
	maxAge   time.Duration
	log      *slog.Logger
	now      func() time.Time

	state atomic.Pointer[liveState] // nil until the first successful load

	// mu serialises refreshes (LoadOnce and Run's ticks) and guards
	// outcome. Helpers named *Locked run with it held.
	mu      sync.Mutex
	outcome refreshOutcome // of the last refresh, to log changes only
}

// liveState is replaced whole, never changed, so readers see a consistent
// index, load time and snapshot identity.
type liveState struct {
	ix     *Index
	loaded time.Time          // last successful refresh (download or unchanged check)
	snap   backend.ObjectInfo // Stat of the snapshot ix was decoded from
	// settled: a later Stat with the same size and mtime may skip the
	// download. Not so after the first download of a snapshot whose mtime
	// has whole seconds (S3): another snapshot of the same size written in
	// the same second would look unchanged, so it is read once more.
	settled bool
}

type refreshOutcome int

const (
	outcomeNone refreshOutcome = iota // no refresh yet
	outcomeOK
	outcomeNoIndex
	outcomeFailed
)

// NewLive returns a Live for s with nothing loaded; call LoadOnce, then Run.
func NewLive(s backend.Store, opt LiveOptions) *Live {
	l := &Live{store: s, interval: opt.Interval, maxAge: opt.MaxAge, log: opt.Logger, now: opt.Now}
	if l.interval <= 0 {
		l.interval = 30 * time.Second
	}
	if l.maxAge <= 0 {
		l.maxAge = 3 * l.interval
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l
}

// LoadOnce refreshes the index synchronously: the mount's first load, also
// usable to force a refresh. When the store has no snapshot, it returns an
// error wrapping ErrNoIndex and keeps whatever was loaded before (nil at
// first). It does not log; the caller has the error.
func (l *Live) LoadOnce(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.refreshLocked(ctx)
	l.outcome = outcomeOf(err)
	return err
}

// Run refreshes the index every Interval until ctx is done. A failed
// refresh keeps the previous index, which turns stale after MaxAge; it is
// logged when the outcome changes (ok, no index, failing), not every tick.
func (l *Live) Run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		err := l.refreshLocked(ctx)
		if ctx.Err() == nil {
			l.reportLocked(ctx, err)
		}
		l.mu.Unlock()
	}
}

// Current is the index loaded last, or nil if none has been.
func (l *Live) Current() *Index {
	if st := l.state.Load(); st != nil {
		return st.ix
	}
	return nil
}

// Fresh reports whether an index is loaded and the last successful load is
// younger than MaxAge: only then may an absent name be answered from the
// index without asking the store.
func (l *Live) Fresh() bool {
	st := l.state.Load()
	return st != nil && l.now().Sub(st.loaded) < l.maxAge
}

// LastLoad is when the last successful refresh started, zero if none.
func (l *Live) LastLoad() time.Time {
	if st := l.state.Load(); st != nil {
		return st.loaded
	}
	return time.Time{}
}

// refreshLocked stats the snapshot and downloads it unless it is the one
// already loaded. The load time recorded is when the Stat was made, so
// freshness never overstates what was checked.
func (l *Live) refreshLocked(ctx context.Context) error {
	start := l.now()
	info, err := l.store.Stat(ctx, SnapshotKey)
	if errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("load index %s: %w", snapshotLocation(l.store), ErrNoIndex)
	}
	if err != nil {
		return fmt.Errorf("stat index %s: %w", snapshotLocation(l.store), err)
	}
	cur := l.state.Load()
	same := cur != nil && cur.snap.Size == info.Size && cur.snap.ModTime.Equal(info.ModTime)
	if same && cur.settled {
		l.state.Store(&liveState{ix: cur.ix, loaded: start, snap: cur.snap, settled: true})
		return nil
	}
	ix, err := Load(ctx, l.store)
	if err != nil {
		return err
	}
	l.state.Store(&liveState{ix: ix, loaded: start, snap: info, settled: same || info.ModTime.Nanosecond() != 0})
	if !same {
		l.log.LogAttrs(ctx, slog.LevelInfo, "index loaded",
			slog.String("store", l.store.Location()), slog.Int("objects", ix.Len()),
			slog.Time("created", ix.Created()))
	}
	return nil
}

func outcomeOf(err error) refreshOutcome {
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, ErrNoIndex):
		return outcomeNoIndex
	}
	return outcomeFailed
}

// reportLocked logs err if the outcome differs from the last refresh's.
func (l *Live) reportLocked(ctx context.Context, err error) {
	o := outcomeOf(err)
	if o == l.outcome {
		return
	}
	prev := l.outcome
	l.outcome = o
	store := slog.String("store", l.store.Location())
	switch o {
	case outcomeOK:
		if prev != outcomeNone {
			l.log.LogAttrs(ctx, slog.LevelInfo, "index refresh recovered", store)
		}
	case outcomeNoIndex:
		l.log.LogAttrs(ctx, slog.LevelWarn, "store has no index; names are looked up in the store", store)
	case outcomeFailed:
		l.log.LogAttrs(ctx, slog.LevelWarn, "index refresh failed; keeping the previous index until it is stale",
			store, slog.Any("error", err))
	}
}
