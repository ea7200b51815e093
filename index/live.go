package index

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
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
	// It also dates listings: see SkewMargin.
	Now func() time.Time
	// SkewMargin: a refresh lists only the journal keys (which start with
	// their writer's clock) after the start of the last listing minus
	// this margin, which must cover the clock skew between writers and
	// this host plus the time a writer takes to upload a segment after
	// naming it; 0 means DefaultSkewMargin.
	SkewMargin time.Duration
	// FullListEvery: how often a refresh lists the whole journal anyway,
	// to find the segments of a writer whose clock lags by more than
	// SkewMargin: such a segment is missing from the index for at most
	// this long plus Interval. 0 means DefaultFullListEvery.
	FullListEvery time.Duration
	// FetchConcurrency: segments downloaded at once; 0 means
	// DefaultFetchConcurrency.
	FetchConcurrency int
}

const (
	// DefaultSkewMargin: two minutes is far beyond the skew of hosts kept
	// by NTP (milliseconds) and the upload of a segment (a Journal gives
	// one a minute at most), and costs little: only the segments of the
	// last two minutes are listed again. A segment applied locally and
	// listed late is kept meanwhile (see refreshLocked).
	DefaultSkewMargin = 2 * time.Minute
	// DefaultFullListEvery: a whole listing every ten minutes costs one
	// request per 1,000 segments, so a journal kept short by compaction
	// (see CompactTriggers) adds a request or two per ten minutes.
	DefaultFullListEvery = 10 * time.Minute
)

// Live holds the current index of a store for the mount and refreshes it
// in the background: the snapshot, with the journal segments it does not
// cover applied on top. Lookups (Current, Fresh) never block on a refresh:
// they read one atomic pointer.
//
// A refresh lists the journal, downloads only segments it has not seen
// (they never change), and downloads the snapshot only when its size or
// modification time changed. It lists only the keys written since the
// last listing (see SkewMargin), and the whole journal every
// FullListEvery, so that its requests grow with what changed rather than
// with the journal.
type Live struct {
	store    backend.Store
	interval time.Duration
	maxAge   time.Duration
	log      *slog.Logger
	now      func() time.Time

	state atomic.Pointer[liveState] // nil until the first successful load

	// mu serialises refreshes (LoadOnce and Run's ticks) and guards
	// outcome and loader (with its segment cache). Helpers named *Locked
	// run with it held.
	mu      sync.Mutex
	outcome refreshOutcome // of the last refresh, to log changes only
	loader  *loader
	// lastList, lastWhole: when the last listing, and the last listing
	// of the whole journal, started (by now); zero before the first.
	lastList, lastWhole time.Time
	skew, wholeEvery    time.Duration

	// localMu guards local and gen, and orders the replacements of state
	// by Apply and by the end of a refresh. Lock order: mu, then localMu.
	localMu sync.Mutex
	local   map[string]localSegment // segments this process wrote, by key
	gen     uint64                  // counts Apply calls

	lastErr atomic.Pointer[string] // of the last refresh, nil when it succeeded

	// refreshed gets a value (if it has room) after each successful
	// refresh: CompactEvery checks its triggers then.
	refreshed chan struct{}
}

// localSegment is a segment given to Apply, kept until a listing of the
// journal that started after it was written has been loaded.
type localSegment struct {
	seg *Segment
	gen uint64
}

// liveState is replaced whole, never changed, so readers see a consistent
// index, load time and snapshot identity.
type liveState struct {
	ix     *Index
	loaded time.Time          // last successful refresh (download or unchanged check)
	snap   backend.ObjectInfo // Stat of the snapshot base was decoded from
	base   *Index             // that snapshot, nil if the store has none
	// segBytes: the listed size of the segments applied on top of base.
	segBytes int64
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
	l := &Live{store: s, interval: opt.Interval, maxAge: opt.MaxAge, log: opt.Logger, now: opt.Now,
		local: map[string]localSegment{}, refreshed: make(chan struct{}, 1), skew: cmp.Or(opt.SkewMargin, DefaultSkewMargin),
		wholeEvery: cmp.Or(opt.FullListEvery, DefaultFullListEvery)}
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
	l.loader = newLoader(s, l.log)
	l.loader.fetchers = opt.FetchConcurrency
	return l
}

// LoadOnce refreshes the index synchronously, listing the whole journal:
// the mount's first load, also usable to force a refresh. When the store
// has neither a snapshot nor journal segments, it returns an error
// wrapping ErrNoIndex and keeps whatever was loaded before (nil at
// first). It does not log refresh failures; the caller has the error.
func (l *Live) LoadOnce(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.refreshLocked(ctx, true)
	l.outcome = outcomeOf(err)
	l.noteLocked(err)
	return err
}

// noteLocked keeps the outcome of a refresh for RefreshError.
func (l *Live) noteLocked(err error) {
	if err == nil || errors.Is(err, ErrNoIndex) {
		l.lastErr.Store(nil)
		return
	}
	msg := err.Error()
	l.lastErr.Store(&msg)
}

// RefreshError is the error of the last refresh ("" when it succeeded or
// found no index): the store did not answer, or answered nonsense.
func (l *Live) RefreshError() string {
	if p := l.lastErr.Load(); p != nil {
		return *p
	}
	return ""
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
		l.tick(ctx)
	}
}

// tick is one of Run's refreshes.
func (l *Live) tick(ctx context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.refreshLocked(ctx, false)
	if ctx.Err() == nil {
		l.reportLocked(ctx, err)
		l.noteLocked(err)
	}
}

// Apply adds a segment this process has just written to the current index
// at once, so that what it published is visible here before the next
// refresh: register it with Journal.OnWrite. Later refreshes keep it until
// they list it (or a snapshot includes it). Without a loaded index it only
// waits for the next refresh.
//
// Its records are applied after those already loaded; the next refresh
// puts them in key order, which can matter only for two different
// records of one key: two objects, or two equivalences of one method and
// taskhash (another host's report of an earlier segment, not loaded yet,
// then takes over from this process's own).
func (l *Live) Apply(seg Segment) {
	if _, ok := parseSegmentKey(seg.Key); !ok {
		return
	}
	s := &seg
	l.localMu.Lock()
	defer l.localMu.Unlock()
	l.gen++
	l.local[s.Key] = localSegment{seg: s, gen: l.gen}
	if cur := l.state.Load(); cur != nil {
		next := *cur
		next.ix = apply(cur.ix, []*Segment{s})
		l.state.Store(&next)
	}
}

// Current is the index loaded last, or nil if none has been.
func (l *Live) Current() *Index {
	if st := l.state.Load(); st != nil {
		return st.ix
	}
	return nil
}

// Fresh reports whether an index is loaded, is complete (Sources.Complete)
// and the last successful load is younger than MaxAge: only then may an
// absent name be answered from the index without asking the store. An
// index of journal segments alone answers for what it holds, not for
// what it lacks.
func (l *Live) Fresh() bool {
	st := l.state.Load()
	return st != nil && st.ix.complete && l.now().Sub(st.loaded) < l.maxAge
}

// journalSize returns the number and listed size of the journal segments
// applied on top of the snapshot at the last refresh (segments applied
// since are counted, without their size).
func (l *Live) journalSize() (int, int64) {
	st := l.state.Load()
	if st == nil {
		return 0, 0
	}
	return st.ix.Sources().Applied, st.segBytes
}

// LastLoad is when the last successful refresh started, zero if none.
func (l *Live) LastLoad() time.Time {
	if st := l.state.Load(); st != nil {
		return st.loaded
	}
	return time.Time{}
}

// refreshLocked lists the journal (whole, or after listAfterLocked), stats the snapshot and downloads it
// unless it is the one already loaded, downloads the segments not seen
// before and applies them. The load time recorded is when the refresh
// started, so freshness never overstates what was checked.
func (l *Live) refreshLocked(ctx context.Context, whole bool) error {
	start := l.now()
	l.localMu.Lock()
	g0 := l.gen
	locals := make([]*Segment, 0, len(l.local))
	for _, ls := range l.local {
		locals = append(locals, ls.seg)
	}
	l.localMu.Unlock()

	var settled, changed bool
	snap := func(ctx context.Context) (*Index, backend.ObjectInfo, error) {
		info, err := l.store.Stat(ctx, SnapshotKey)
		if errors.Is(err, backend.ErrNotExist) {
			return nil, backend.ObjectInfo{}, fmt.Errorf("load index %s: %w", snapshotLocation(l.store), ErrNoIndex)
		}
		if err != nil {
			return nil, backend.ObjectInfo{}, fmt.Errorf("stat index %s: %w", snapshotLocation(l.store), err)
		}
		cur := l.state.Load()
		same := cur != nil && cur.base != nil && cur.snap.Size == info.Size && cur.snap.ModTime.Equal(info.ModTime)
		if same && cur.settled {
			settled, changed = true, false
			return cur.base, cur.snap, nil
		}
		ix, err := LoadSnapshot(ctx, l.store)
		if err != nil {
			return nil, backend.ObjectInfo{}, err
		}
		settled, changed = same || info.ModTime.Nanosecond() != 0, !same
		return ix, info, nil
	}
	after := ""
	if !whole {
		after = l.listAfterLocked(start)
	}
	res, err := l.loader.load(ctx, snap, locals, after)
	if err != nil {
		return err
	}
	l.lastList = start
	if res.whole {
		l.lastWhole = start
	}

	l.localMu.Lock()
	defer l.localMu.Unlock()
	// Segments applied before the listing started are listed, or were
	// folded into the snapshot read after it: they need no keeping, once
	// seen there (a listing after a key misses a segment whose upload
	// outlasted SkewMargin; it is passed to the loader again until a
	// listing finds it). Those applied meanwhile go on top.
	var late []*Segment
	for k, ls := range l.local {
		switch {
		case ls.gen > g0:
			if !slices.Contains(res.applied, k) {
				late = append(late, ls.seg)
			}
		case !res.listed || l.loader.known[k].Key != "" || res.base.coversSegment(k):
			delete(l.local, k)
		}
	}
	ix := res.ix
	if len(late) > 0 {
		slices.SortFunc(late, func(a, b *Segment) int { return strings.Compare(a.Key, b.Key) })
		ix = apply(ix, late)
	}
	var segBytes int64
	for _, oi := range res.segments {
		if _, ok := slices.BinarySearch(res.applied, oi.Key); ok {
			segBytes += oi.Size
		}
	}
	prev := l.state.Load()
	l.state.Store(&liveState{ix: ix, loaded: start, snap: res.snap, base: res.base, settled: settled, segBytes: segBytes})
	select {
	case l.refreshed <- struct{}{}:
	default:
	}
	if level := slog.LevelDebug; changed || prev == nil || prev.ix != ix {
		if changed || prev == nil {
			level = slog.LevelInfo // a new snapshot; new segments are routine
		}
		src := ix.Sources()
		attrs := []slog.Attr{slog.String("store", l.store.Location()), slog.Int("objects", ix.Len()),
			slog.Int64("bytes", ix.TotalSize()), slog.Int("equivalences", ix.NumEquivalences()),
			slog.Time("created", ix.Created()), slog.Int("segments", src.Applied),
			slog.Bool("complete", src.Complete)}
		if src.Invalid > 0 {
			attrs = append(attrs, slog.Int("invalid_equivalences", src.Invalid))
		}
		attrs = append(attrs, slog.Duration("took", l.now().Sub(start).Round(time.Millisecond)))
		l.log.LogAttrs(ctx, level, "index loaded", attrs...)
	}
	return nil
}

// coversSegment reports whether the segment key is folded into ix.
func (ix *Index) coversSegment(key string) bool {
	if ix == nil {
		return false
	}
	_, ok := slices.BinarySearch(ix.covered, key)
	return ok
}

// listAfterLocked returns where the listing of a refresh starting at start
// begins: "" (the whole journal) at first and every wholeEvery, else the
// key of the time skew before the last listing started. Every segment
// named after that time and not listed then is listed now.
func (l *Live) listAfterLocked(start time.Time) string {
	if l.lastList.IsZero() || l.lastWhole.IsZero() || start.Sub(l.lastWhole) >= l.wholeEvery {
		return ""
	}
	return fmt.Sprintf("%s%020d", JournalPrefix, max(l.lastList.Add(-l.skew).UnixNano(), 0))
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
