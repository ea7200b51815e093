package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

// JournalOptions configure a Journal.
type JournalOptions struct {
	// Writer is a short id of this writer, stable across restarts, such as
	// the host name. It is sanitized to [a-z0-9-] (SanitizeWriter); empty
	// means the host name.
	Writer string
	// Window: the first record of a batch waits this long for others
	// before the batch is written as one segment (group commit), unless
	// MaxBatch records come first, Flush takes it, or Hurry or a Reported
	// call (bitbake waits for its answer) cuts it short. 0 means 5 ms: only the
	// calls in flight together share a segment. A mount sets a long window
	// (publish.record_interval) so that a build writes a handful of
	// segments: other builders see records only at their next index
	// refresh anyway.
	Window time.Duration
	// FlushInterval: Run writes pending access records this often when no
	// batch is open to carry them; 0 means Window, and at least 2 s.
	FlushInterval time.Duration
	// MaxBatch: at most this many objects and equivalences go into one
	// segment; 0 means 1000, and more than 10,000 means 10,000 (a segment
	// stays well under the format's limits even with the longest keys).
	MaxBatch int
	// Logger receives failures of Run's background writes; nil discards.
	Logger *slog.Logger
	// Now is the clock segments are named with; nil means time.Now.
	Now func() time.Time
}

const (
	// commitWindow: the default Window, and how long a Reported call
	// lets others join its batch before the segment is written.
	commitWindow = 5 * time.Millisecond
	// journalWriteTimeout bounds one segment write, which runs on behalf of
	// every caller in the batch and so on none of their contexts.
	journalWriteTimeout = time.Minute
	// maxAccessPerSegment and maxAccessBytes bound the access records one
	// segment takes; the rest wait for the next. accessKick wakes Run
	// early.
	maxAccessPerSegment = 100_000
	maxAccessBytes      = 16 << 20
	accessKick          = 50_000
	maxMaxBatch         = 10_000
)

// Journal writes this process's records into the store's index journal:
// objects it published (Added) and equivalences reported to it (Reported),
// both durable when the call returns, and accesses (Accessed, batched).
// Records are written in batches (group commit, see JournalOptions.Window);
// each write is a new immutable segment, created conditionally, so any
// number of writers on any number of hosts share one store without
// coordination. Safe for concurrent use.
type Journal struct {
	store    backend.Store
	writer   string
	interval time.Duration
	window   time.Duration
	maxBatch int
	log      *slog.Logger
	now      func() time.Time
	// timer starts a batch's window (tests drive it by hand)
	timer func(time.Duration) (<-chan time.Time, func() bool)

	// sem admits one segment write at a time. While one is in flight the
	// next batch keeps growing: under load, a segment per store round trip
	// (group commit). Taken before mu, never while holding it.
	sem  chan struct{}
	kick chan struct{} // wakes Run when access records pile up

	mu       sync.Mutex // guards the fields below; never held during I/O
	open     *batch     // the batch accepting objects, nil if none
	access   map[string]uint32
	hooks    []func(Segment)
	hurry    int  // Hurry calls not yet done: batches do not wait for the window
	readOnly bool // the store refused a write as read-only: drop access records
	failing  bool // Run's last flush failed (to log changes only)
}

// batch is a group of Added and Reported calls written as one segment.
type batch struct {
	objs    []Object
	eqs     []Equivalence
	sigs    []Signoff     // Signed (signoff.go)
	wake    chan struct{} // closed when full or taken by Flush: write now
	soon    chan struct{} // closed by Reported: write after commitWindow
	done    chan struct{} // closed when written or failed; err is set before
	err     error
	claimed bool // (Journal.mu) a writer has taken it
	woken   bool // (Journal.mu) wake is closed
	hurried bool // (Journal.mu) soon is closed
}

// wakeLocked closes b.wake once (Journal.mu held).
func (b *batch) wakeLocked() {
	if !b.woken {
		b.woken = true
		close(b.wake)
	}
}

// NewJournal returns a journal writing to s.
func NewJournal(s backend.Store, opt JournalOptions) *Journal {
	j := &Journal{
		store: s, writer: defaultWriter(opt.Writer), interval: opt.FlushInterval, window: opt.Window, maxBatch: opt.MaxBatch,
		log: opt.Logger, now: opt.Now,
		sem: make(chan struct{}, 1), kick: make(chan struct{}, 1), access: map[string]uint32{},
	}
	if j.window <= 0 {
		j.window = commitWindow
	}
	if j.interval <= 0 {
		j.interval = max(j.window, 2*time.Second)
	}
	if j.maxBatch <= 0 {
		j.maxBatch = 1000
	}
	j.maxBatch = min(j.maxBatch, maxMaxBatch)
	if j.log == nil {
		j.log = slog.New(slog.DiscardHandler)
	}
	if j.now == nil {
		j.now = time.Now
	}
	j.timer = func(d time.Duration) (<-chan time.Time, func() bool) {
		t := time.NewTimer(d)
		return t.C, t.Stop
	}
	return j
}

// Writer is the sanitized writer id that names this journal's segments.
func (j *Journal) Writer() string { return j.writer }

// OnWrite registers fn to be called with every segment once it is in the
// store, before the Added and Reported calls it holds return: the mount
// applies its own records to its index at once (Live.Apply). fn runs on
// the writing goroutine, must be quick and must not modify the segment.
func (j *Journal) OnWrite(fn func(Segment)) {
	j.mu.Lock()
	j.hooks = append(j.hooks, fn)
	j.mu.Unlock()
}

// Added records that o is in the store. It returns once a segment holding
// the record is in the store, or with an error: the caller retries (a
// record written twice does no harm). Calls share segments (group
// commit): the first waits for the window (JournalOptions.Window), or
// until MaxBatch records have come, or for Flush, Hurry or a Reported
// call, and then all are written, after any segment write in flight; if
// that write fails, every call in the batch gets the error. Pending access
// records go into the same segment.
//
// Cancelling ctx makes Added return early; the record may still be written.
func (j *Journal) Added(ctx context.Context, o Object) error {
	if err := checkObject(o); err != nil {
		return err
	}
	return j.enqueue(ctx, false, func(b *batch) { b.objs = append(b.objs, o) })
}

// checkObject refuses a record the segment encoder would refuse, before
// it fails a whole batch.
func checkObject(o Object) error {
	if o.Size < 0 || !validKey(o.Key) {
		return fmt.Errorf("index journal: invalid object %q (%d bytes) not recorded", o.Key, o.Size)
	}
	if !validChunks(o.Size, o.Chunks) {
		return fmt.Errorf("index journal: object %q of %d bytes with %d chunk digests (want %d) not recorded",
			o.Key, o.Size, len(o.Chunks), NumChunks(o.Size))
	}
	return nil
}

// Reported records the equivalence e, as bitbake's hash equivalence server
// inserts a report; a zero Created is set to the journal's clock. Like
// Added, it returns once a segment holding the record is in the store
// (batched with other Added and Reported calls), or with an error: the
// caller retries (a record written twice does no harm: the first one
// stays in force). A record that fails Equivalence.Validate is not
// recorded; the error wraps ErrInvalidEquivalence.
//
// Whether e is then in force depends on the records reported before it
// (see the merge rules in merge.go): look it up after Reported returns.
func (j *Journal) Reported(ctx context.Context, e Equivalence) error {
	if e.Created.IsZero() {
		e.Created = j.now()
	}
	if err := e.Validate(); err != nil {
		return fmt.Errorf("index journal: equivalence not recorded: %w", err)
	}
	// bitbake waits for the answer: the open batch is written after
	// commitWindow, however long the journal's window
	return j.enqueue(ctx, true, func(b *batch) { b.eqs = append(b.eqs, e) })
}

// ReportedLater adds e to the open batch like Reported but returns at
// once, and does not cut the batch's window short: for a caller that made
// e durable elsewhere first (the mount's hash equivalence reports, kept in
// a local write-ahead file), so that reports ride in the segments of the
// build's objects instead of a segment each. wait returns once the segment
// holding e is in the store (the OnWrite hooks have run), or with the
// batch's error: the caller then adds e again.
func (j *Journal) ReportedLater(ctx context.Context, e Equivalence) (wait func(context.Context) error, err error) {
	if e.Created.IsZero() {
		e.Created = j.now()
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("index journal: equivalence not recorded: %w", err)
	}
	b := j.add(ctx, false, func(b *batch) { b.eqs = append(b.eqs, e) })
	return func(ctx context.Context) error {
		select { // a written batch counts even when ctx is done too
		case <-b.done:
			return b.err
		default:
		}
		select {
		case <-b.done:
			return b.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}, nil
}

// enqueue adds a record to the open batch (with add) and waits until the
// batch is written. urgent cuts the batch's window short.
func (j *Journal) enqueue(ctx context.Context, urgent bool, add func(*batch)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := j.add(ctx, urgent, add)
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// add adds a record to the open batch (with add), opening one if none is,
// and returns the batch.
func (j *Journal) add(ctx context.Context, urgent bool, add func(*batch)) *batch {
	j.mu.Lock()
	defer j.mu.Unlock()
	b := j.open
	if b == nil {
		b = &batch{wake: make(chan struct{}), soon: make(chan struct{}), done: make(chan struct{})}
		j.open = b
		go j.commit(context.WithoutCancel(ctx), b)
	}
	add(b)
	if b.isFull(j.maxBatch) {
		j.open = nil
		b.wakeLocked()
	}
	if urgent && !b.hurried {
		b.hurried = true
		close(b.soon)
	}
	return b
}

// Hurry makes batches stop waiting for the window until done is called:
// the open batch is written now, later ones after a few milliseconds (the
// calls in flight still share a segment). The upload queue hurries the
// journal while it drains at shutdown: the records of its last uploads do
// not wait.
func (j *Journal) Hurry() (done func()) {
	j.mu.Lock()
	j.hurry++
	if j.open != nil {
		j.open.wakeLocked()
	}
	j.mu.Unlock()
	return sync.OnceFunc(func() {
		j.mu.Lock()
		j.hurry--
		j.mu.Unlock()
	})
}

// commit writes batch b when its window ends or it is woken, unless Flush
// took it.
func (j *Journal) commit(ctx context.Context, b *batch) {
	d := j.window
	j.mu.Lock()
	if j.hurry > 0 {
		d = min(d, commitWindow)
	}
	j.mu.Unlock()
	window, stop := j.timer(d)
	select {
	case <-window:
	case <-b.wake:
	case <-b.soon:
		// a report: others in flight join it for commitWindow at most
		t := time.NewTimer(min(commitWindow, j.window))
		select {
		case <-t.C:
		case <-b.wake:
		}
		t.Stop()
	}
	stop()
	j.sem <- struct{}{} // bounded: every write has a timeout
	defer func() { <-j.sem }()
	j.mu.Lock()
	if b.claimed {
		j.mu.Unlock()
		return
	}
	b.claimed = true
	if j.open == b {
		j.open = nil
	}
	acc := j.takeAccessLocked()
	j.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, journalWriteTimeout)
	defer cancel()
	b.err = j.write(wctx, b.objs, b.eqs, b.sigs, acc)
	close(b.done)
}

// Accessed records that bitbake used key at t. It never blocks: records
// are kept per key (the latest time: many accesses of one key until the
// next write give one record) and written with the next segment, or by Run
// every FlushInterval. Invalid keys and zero times are ignored, and
// everything once the store turned out to be read-only.
func (j *Journal) Accessed(key string, t time.Time) {
	at := toSecs(t)
	if at == 0 || !validKey(key) {
		return
	}
	j.mu.Lock()
	if j.readOnly {
		j.mu.Unlock()
		return
	}
	if at > j.access[key] {
		j.access[key] = at
	}
	n := len(j.access)
	j.mu.Unlock()
	if n >= accessKick {
		select {
		case j.kick <- struct{}{}:
		default:
		}
	}
}

// Run writes pending access records every FlushInterval until ctx is done,
// unless a batch is open: its segment takes them. Failures are logged when
// the outcome changes; the records are kept and written by a later flush.
func (j *Journal) Run(ctx context.Context) {
	t := time.NewTicker(j.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-j.kick:
		}
		j.mu.Lock()
		idle := len(j.access) == 0 || j.open != nil && len(j.access) < accessKick
		j.mu.Unlock()
		if idle {
			continue
		}
		err := j.Flush(ctx)
		if ctx.Err() != nil {
			return
		}
		j.mu.Lock()
		was := j.failing
		j.failing = err != nil
		j.mu.Unlock()
		switch {
		case err != nil && !was:
			j.log.LogAttrs(ctx, slog.LevelWarn, "index journal: writing access records failed; will retry",
				slog.String("store", j.store.Location()), slog.Any("error", err))
		case err == nil && was:
			j.log.LogAttrs(ctx, slog.LevelInfo, "index journal: writing access records recovered",
				slog.String("store", j.store.Location()))
		}
	}
}

// Flush writes the pending access records (and objects and equivalences
// waiting for their batch) now, after any segment write in flight; used at shutdown. Records
// that could not be written stay pending.
func (j *Journal) Flush(ctx context.Context) error {
	for {
		select {
		case j.sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		j.mu.Lock()
		b := j.open
		if b != nil {
			b.claimed = true
			b.wakeLocked() // its commit goroutine ends
			j.open = nil
		}
		acc := j.takeAccessLocked()
		more := len(j.access) > 0
		j.mu.Unlock()
		var (
			objs []Object
			eqs  []Equivalence
			sigs []Signoff
		)
		if b != nil {
			objs, eqs, sigs = b.objs, b.eqs, b.sigs
		}
		err := j.write(ctx, objs, eqs, sigs, acc)
		<-j.sem
		if b != nil {
			b.err = err
			close(b.done)
		}
		if err != nil || !more {
			return err
		}
	}
}

// takeAccessLocked takes up to maxAccessPerSegment pending access records
// (and about maxAccessBytes of them), sorted by key.
func (j *Journal) takeAccessLocked() []Access {
	if len(j.access) == 0 {
		return nil
	}
	out := make([]Access, 0, min(len(j.access), maxAccessPerSegment))
	size := 0
	for k, at := range j.access {
		if len(out) == maxAccessPerSegment || size > maxAccessBytes {
			break
		}
		size += len(k) + 2*binary.MaxVarintLen64 + 1
		out = append(out, Access{Key: k, Time: fromSecs(at)})
		delete(j.access, k)
	}
	slices.SortFunc(out, func(a, b Access) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// write stores one segment of objs, eqs, sigs and acc. On failure the
// access records go back to the pending ones (unless the store is
// read-only).
func (j *Journal) write(ctx context.Context, objs []Object, eqs []Equivalence, sigs []Signoff, acc []Access) error {
	if len(objs) == 0 && len(eqs) == 0 && len(sigs) == 0 && len(acc) == 0 {
		return nil
	}
	ns := max(j.now().UnixNano(), 0)
	seg := Segment{Writer: j.writer, Time: time.Unix(0, ns), Added: objs, Reported: eqs, Signed: sigs, Accessed: acc}
	data, err := encodeSegment(&seg)
	if err == nil {
		// A new random part on the (unheard-of) clash with another segment.
		for range 3 {
			seg.Key = segmentKey(ns, j.writer)
			err = j.store.Create(ctx, seg.Key, bytes.NewReader(data), int64(len(data)))
			if !errors.Is(err, backend.ErrExist) {
				break
			}
		}
	}
	if err != nil {
		j.mu.Lock()
		if errors.Is(err, backend.ErrReadOnly) && !j.readOnly {
			j.readOnly = true
			clear(j.access)
			j.log.LogAttrs(ctx, slog.LevelWarn, "index journal: the store is read-only; access records are not kept",
				slog.String("store", j.store.Location()))
		}
		if !j.readOnly {
			for _, a := range acc {
				if at := toSecs(a.Time); at > j.access[a.Key] {
					j.access[a.Key] = at
				}
			}
		}
		j.mu.Unlock()
		return fmt.Errorf("index journal: write segment %s/%s: %w", j.store.Location(), seg.Key, err)
	}
	j.mu.Lock()
	hooks := slices.Clone(j.hooks)
	j.mu.Unlock()
	for _, fn := range hooks {
		fn(seg)
	}
	return nil
}

// Later is a view of a Journal for bulk writers (push): its Added adds the
// record to the open batch and returns at once, without waiting for the
// segment, so that a few workers fill batches up to MaxBatch instead of
// writing a segment per round of uploads. Flush writes what is pending and
// waits for every batch Later added to. A record is still added only once
// its object is in the store; what a crash before Flush leaves unrecorded
// is recorded by the next run (the object is then found in the store).
// Safe for concurrent use.
type Later struct {
	j       *Journal
	mu      sync.Mutex
	batches map[*batch]struct{} // not yet seen written by Flush
}

// Later returns a Later on j.
func (j *Journal) Later() *Later { return &Later{j: j, batches: map[*batch]struct{}{}} }

// Added adds o to the open batch; it does not wait for the segment. Flush
// reports whether it was written.
func (l *Later) Added(ctx context.Context, o Object) error {
	if err := checkObject(o); err != nil {
		return err
	}
	b := l.j.add(ctx, false, func(b *batch) { b.objs = append(b.objs, o) })
	l.mu.Lock()
	l.batches[b] = struct{}{}
	l.mu.Unlock()
	return nil
}

// Flush writes the open batch now and waits until every batch that Added
// added to is written; it returns the first failure (the caller runs again:
// a record written twice does no harm).
func (l *Later) Flush(ctx context.Context) error {
	err := l.j.Flush(ctx)
	l.mu.Lock()
	bs := make([]*batch, 0, len(l.batches))
	for b := range l.batches {
		bs = append(bs, b)
	}
	clear(l.batches)
	l.mu.Unlock()
	for _, b := range bs {
		select {
		case <-b.done:
			if err == nil {
				err = b.err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}
