package view

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
)

// tier is a store of the view with its counters and whether it answers.
type tier struct {
	Store
	pos int

	hits, resolved, probes, probeHits, probeErrors, fetchErrors, fetched atomic.Int64

	policy                                 *policyState // nil without a Policy
	verified, hiddenUnsigned, hiddenBadSig atomic.Int64

	// A store that does not answer (a failed probe or check) is left out
	// until retryAt; each failure in a row doubles the wait.
	mu       sync.Mutex // protects the fields below
	downNow  atomic.Bool
	retryAt  time.Time
	wait     time.Duration
	since    time.Time
	lastErr  string
	checking bool
}

// Back-off of a store that does not answer.
const (
	minDownWait = 5 * time.Second
	maxDownWait = 2 * time.Minute
)

// down reports whether the store is left out of lookups now: it failed
// and its back-off has not run out.
func (t *tier) down(now time.Time) bool {
	if !t.downNow.Load() {
		return false // the lookups' path: one atomic load
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return now.Before(t.retryAt)
}

// failed records that the store did not answer: it is left out for a
// while (logged when it starts).
func (t *tier) failed(v *View, err error) {
	now := v.now()
	t.mu.Lock()
	first := !t.downNow.Load()
	if first {
		t.wait, t.since = minDownWait, now
	} else {
		t.wait = min(2*t.wait, maxDownWait)
	}
	t.retryAt = now.Add(t.wait)
	t.lastErr = err.Error()
	t.downNow.Store(true)
	t.mu.Unlock()
	if first {
		v.log.Warn("store does not answer: its objects are absent from the mount until it does", "store", t.Name, "error", err, "retry_in", t.wait)
	}
}

// answered records that the store answered (logged if it had not).
func (t *tier) answered(v *View) {
	if !t.downNow.Load() {
		return
	}
	t.mu.Lock()
	was := t.downNow.Swap(false)
	since := t.since
	t.mu.Unlock()
	if was {
		v.log.Info("store answers again", "store", t.Name, "was_down", v.now().Sub(since).Round(time.Second))
	}
}

// Failed records that the store at position pos did not answer (such as
// its first index load at start): it is left out of lookups until a check
// succeeds.
func (v *View) Failed(pos int, err error) { v.stores[pos].failed(v, err) }

// RunHealth checks the stores that do not answer when their back-off runs
// out, until ctx ends, so that lookups never wait for such a store: it
// comes back once a check succeeds. (Without it, the first lookup after the
// back-off probes the store.)
func (v *View) RunHealth(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, t := range v.stores {
			if !t.downNow.Load() {
				continue
			}
			t.mu.Lock()
			due := !v.now().Before(t.retryAt) && !t.checking
			if due {
				// until the check ends, lookups still leave the store out
				t.retryAt = v.now().Add(time.Hour)
				t.checking = true
			}
			t.mu.Unlock()
			if due {
				err := Check(ctx, t.Store.Store)
				t.mu.Lock()
				t.checking = false
				t.mu.Unlock()
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					t.failed(v, err)
				default:
					t.answered(v)
				}
			}
		}
	}
}

// Check asks a store for its index snapshot: an answer, also "not found",
// shows that it is reachable.
func Check(ctx context.Context, s backend.Store) error {
	_, err := s.Stat(ctx, index.SnapshotKey)
	if errors.Is(err, backend.ErrNotExist) {
		return nil
	}
	return err
}

// StoreStats describe one store of the view.
type StoreStats struct {
	Name     string `json:"name"`
	Location string `json:"location"`
	// Hits are names answered with this store's objects from its index,
	// Resolved names resolved through hash equivalence to its objects.
	Hits, Resolved int64
	// Probes asked the store whether a name exists (no fresh index);
	// ProbeHits found it, ProbeErrors failed.
	Probes, ProbeHits, ProbeErrors int64
	// FetchedBytes were downloaded from the store, FetchErrors counts
	// failed downloads.
	FetchedBytes, FetchErrors int64
	// Down says the store does not answer and is left out of lookups
	// since DownSince; LastError is its last failure.
	Down      bool
	DownSince time.Time
	LastError string
	// Under a signature policy: archives whose signatures verified, and
	// archives hidden (distinct names): too few keyring keys signed them,
	// or a keyring key's signature failed.
	Verified, HiddenUnsigned, HiddenBadSignature int64
}

// StoreStats returns the counters and state of every store, in trust
// order.
func (v *View) StoreStats() []StoreStats {
	out := make([]StoreStats, len(v.stores))
	for i, t := range v.stores {
		t.mu.Lock()
		s := StoreStats{
			Name: t.Name, Location: t.Store.Store.Location(),
			Hits: t.hits.Load(), Resolved: t.resolved.Load(), Probes: t.probes.Load(), ProbeHits: t.probeHits.Load(), ProbeErrors: t.probeErrors.Load(),
			FetchedBytes: t.fetched.Load(), FetchErrors: t.fetchErrors.Load(),
			Down: t.downNow.Load(), LastError: t.lastErr,
			Verified: t.verified.Load(), HiddenUnsigned: t.hiddenUnsigned.Load(), HiddenBadSignature: t.hiddenBadSig.Load(),
		}
		if s.Down {
			s.DownSince = t.since
		}
		t.mu.Unlock()
		out[i] = s
	}
	return out
}

// NumStores is the number of stores of the view.
func (v *View) NumStores() int { return len(v.stores) }

// Equivalence answers bitbake's hash equivalence get from every store's
// records: the most trusted store's record for (method, taskhash) whose
// unihash the trust rule admits (see admits).
func (v *View) Equivalence(method, taskhash string) (index.Equivalence, bool) {
	return v.firstAdmitted(func(ix *index.Index) (index.Equivalence, bool) { return ix.Equivalence(method, taskhash) })
}

// ByOuthash is the most trusted admitted record of (method, outhash):
// what a report of that output adopts.
func (v *View) ByOuthash(method, outhash string) (index.Equivalence, bool) {
	return v.firstAdmitted(func(ix *index.Index) (index.Equivalence, bool) { return ix.ByOuthash(method, outhash) })
}

func (v *View) firstAdmitted(get func(*index.Index) (index.Equivalence, bool)) (index.Equivalence, bool) {
	for _, t := range v.stores {
		ix := t.Index.Current()
		if ix == nil {
			continue
		}
		if e, ok := get(ix); ok && v.admits(t.pos, e.Unihash) {
			return e, true
		}
	}
	return index.Equivalence{}, false
}

// admits reports whether a record of the store at position rec may hand
// unihash to bitbake: not when a more trusted store that accepts only
// its own and more trusted records holds an object of that hash. bitbake
// would then restore that store's object under the name, redirected by a
// less trusted store.
func (v *View) admits(rec int, unihash string) bool {
	for _, t := range v.stores[:rec] {
		if !t.AnyEquivalences && t.Index.Current().HasObjectOfHash(unihash) {
			return false
		}
	}
	return true
}

// HasObjectOfHash reports whether any store's index holds an sstate object
// named by hash.
func (v *View) HasObjectOfHash(hash string) bool {
	for _, t := range v.stores {
		if t.Index.Current().HasObjectOfHash(hash) {
			return true
		}
	}
	return false
}

// NumEquivalences counts the equivalence records of every store.
func (v *View) NumEquivalences() int {
	n := 0
	for _, t := range v.stores {
		if ix := t.Index.Current(); ix != nil {
			n += ix.NumEquivalences()
		}
	}
	return n
}
