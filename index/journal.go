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
	// FlushInterval: Run writes pending access records this often; 0 means
	// 2 s.
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
	// commitWindow: the first object of a batch waits this long for
	// others before its segment is written.
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
// both durable when the call returns, and accesses (Accessed, batched). Each write is a new immutable segment, created
// conditionally, so any number of writers on any number of hosts share one
// store without coordination. Safe for concurrent use.
type Journal struct {
	store    backend.Store
	writer   string
	interval time.Duration
	maxBatch int
	log      *slog.Logger
	now      func() time.Time

	// sem admits one segment write at a time. While one is in flight the
	// next batch keeps growing: under load, a segment per store round trip
	// (group commit). Taken before mu, never while holding it.
	sem  chan struct{}
	kick chan struct{} // wakes Run when access records pile up

	mu       sync.Mutex // guards the fields below; never held during I/O
	open     *batch     // the batch accepting objects, nil if none
	access   map[string]uint32
	hooks    []func(Segment)
	readOnly bool // the store refused a write as read-only: drop access records
	failing  bool // Run's last flush failed (to log changes only)
}

// batch is a group of Added and Reported calls written as one segment.
type batch struct {
	objs    []Object
	eqs     []Equivalence
	sigs    []Signoff     // Signed (signoff.go)
	full    chan struct{} // closed when objs reaches MaxBatch
	done    chan struct{} // closed when written or failed; err is set before
	err     error
	claimed bool // (Journal.mu) a writer has taken it
}

// NewJournal returns a journal writing to s.
func NewJournal(s backend.Store, opt JournalOptions) *Journal {
	j := &Journal{
		store: s, writer: defaultWriter(opt.Writer), interval: opt.FlushInterval, maxBatch: opt.MaxBatch,
		log: opt.Logger, now: opt.Now,
		sem: make(chan struct{}, 1), kick: make(chan struct{}, 1), access: map[string]uint32{},
	}
	if j.interval <= 0 {
		j.interval = 2 * time.Second
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
// record written twice does no harm). Concurrent calls share segments: the
// first waits a few milliseconds, or for a segment write in flight, or
// until MaxBatch objects have come, then writes them all; if that write
// fails, every call in the batch gets the error. Pending access records go
// into the same segment.
//
// Cancelling ctx makes Added return early; the record may still be written.
func (j *Journal) Added(ctx context.Context, o Object) error {
	if o.Size < 0 || !validKey(o.Key) {
		return fmt.Errorf("index journal: invalid object %q (%d bytes) not recorded", o.Key, o.Size)
	}
	if !validChunks(o.Size, o.Chunks) {
		// checked here: the segment encoder would fail the whole batch
		return fmt.Errorf("index journal: object %q of %d bytes with %d chunk digests (want %d) not recorded",
			o.Key, o.Size, len(o.Chunks), NumChunks(o.Size))
	}
	return j.enqueue(ctx, func(b *batch) { b.objs = append(b.objs, o) })
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
	return j.enqueue(ctx, func(b *batch) { b.eqs = append(b.eqs, e) })
}

// enqueue adds a record to the open batch (with add) and waits until the
// batch is written.
func (j *Journal) enqueue(ctx context.Context, add func(*batch)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.Lock()
	b := j.open
	if b == nil {
		b = &batch{full: make(chan struct{}), done: make(chan struct{})}
		j.open = b
		go j.commit(context.WithoutCancel(ctx), b)
	}
	add(b)
	if b.isFull(j.maxBatch) {
		j.open = nil
		close(b.full)
	}
	j.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// commit writes batch b after the commit window, unless Flush took it.
func (j *Journal) commit(ctx context.Context, b *batch) {
	t := time.NewTimer(commitWindow)
	select {
	case <-t.C:
	case <-b.full:
	}
	t.Stop()
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
// are kept per key (the latest time) and written with the next segment, or
// by Run every FlushInterval. Invalid keys and zero times are ignored, and
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

// Run writes pending access records every FlushInterval until ctx is done.
// Failures are logged when the outcome changes; the records are kept and
// written by a later flush.
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
		idle := len(j.access) == 0
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
