package index

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/sstatefs/sstatefs/backend"
)

// CompactLockKey is the lock object a compaction holds. Writers never take
// it; it only keeps two compactions from running at once.
const CompactLockKey = ".sstatefs/index/compact.lock"

// DefaultGrace is the grace period callers should give Compact.
const DefaultGrace = 10 * time.Minute

// ErrCompactionRunning: another compaction holds the lock.
var ErrCompactionRunning = errors.New("index compaction already running")

// CompactOptions tune Compact.
type CompactOptions struct {
	// Grace: folded segments younger than this are kept, for a while, for
	// writers whose view of the journal predates the new snapshot (see
	// Compact). Measured on the store's clock. 0 deletes them at once,
	// which only tests should do; DefaultGrace is 10 minutes.
	Grace time.Duration
	// LockTTL: a lock older than this is considered abandoned (its holder
	// crashed) and broken; 0 means 15 minutes.
	LockTTL time.Duration
	// Writer names the holder in the lock, sanitized like a journal's
	// writer id; empty means the host name.
	Writer string
	// Logger receives skipped segments, broken locks and failed deletes;
	// nil discards them.
	Logger *slog.Logger
	// Now is the clock of the lock's expiry; nil means time.Now.
	Now func() time.Time
}

// CompactResult says what a compaction did.
type CompactResult struct {
	Folded  int // segments folded into the snapshot by this compaction
	Deleted int // covered segments deleted (folded now or by an earlier compaction)
	Kept    int // folded segments kept: younger than Grace
	Skipped int // unreadable segments, left alone (see LoadAll)
	Objects int // objects in the snapshot
	// Equivalences: records in force in the snapshot.
	Equivalences int
	Wrote        bool // a new snapshot was written (false: nothing to fold)
}

// Compact folds the journal into the snapshot, safely while writers keep
// writing:
//
//  1. it takes the lock CompactLockKey (a conditional create), or fails
//     with an error wrapping ErrCompactionRunning that names the holder; a
//     lock past its expiry is broken;
//  2. it loads the index as LoadAll does and, if any segment was not yet
//     in the snapshot, writes a new snapshot (Put) that covers every
//     segment it includes;
//  3. it deletes the covered segments older than Grace, and only those: a
//     segment written meanwhile is not covered and stays for the next
//     compaction;
//  4. it releases the lock.
//
// Readers are safe without any grace: they list the journal before reading
// the snapshot and start over when a listed segment has vanished. The
// grace protects whoever replaces the snapshot from an older view of the
// journal: `sstatefs index build`, or a compaction whose lock was broken
// while it ran (after LockTTL).
//
// Unreadable segments are neither covered nor deleted: they may come from a
// newer sstatefs, and otherwise stay for a human to look at.
func Compact(ctx context.Context, s backend.Store, opt CompactOptions) (CompactResult, error) {
	if opt.LockTTL <= 0 {
		opt.LockTTL = 15 * time.Minute
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	var res CompactResult
	lock, err := takeLock(ctx, s, defaultWriter(opt.Writer), opt.LockTTL, opt.Now, opt.Logger)
	if err != nil {
		return res, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if rerr := lock.release(rctx); rerr != nil {
			opt.Logger.Warn("index compaction: releasing the lock failed; it expires by itself", "lock", CompactLockKey, "error", rerr)
		}
	}()
	started := opt.Now()

	loaded, err := newLoader(s, opt.Logger).load(ctx, func(ctx context.Context) (*Index, backend.ObjectInfo, error) {
		ix, err := LoadSnapshot(ctx, s)
		return ix, backend.ObjectInfo{}, err
	}, nil, "")
	if errors.Is(err, ErrNoIndex) {
		return res, nil // nothing to compact
	}
	if err != nil {
		return res, fmt.Errorf("index compaction of %s: %w", s.Location(), err)
	}
	ix := loaded.ix
	res.Objects, res.Folded, res.Skipped = ix.Len(), len(loaded.applied), len(ix.skipped)
	res.Equivalences = ix.NumEquivalences()
	if res.Folded > 0 {
		snap := *ix
		snap.created = toNanos(started)
		if err := lock.check(ctx); err != nil {
			return res, err
		}
		if err := Save(ctx, s, &snap); err != nil {
			return res, fmt.Errorf("index compaction: %w", err)
		}
		res.Wrote = true
	}

	// The store's clock says how old a segment is: the lock was created
	// just before the journal was listed.
	for _, oi := range loaded.segments {
		if _, ok := slices.BinarySearch(ix.covered, oi.Key); !ok {
			continue
		}
		now, written := lock.created, oi.ModTime
		if now.IsZero() || written.IsZero() {
			// No times from the store: the writer's clock in the name.
			name, _ := parseSegmentKey(oi.Key)
			now, written = opt.Now(), time.Unix(0, name.time)
		}
		if now.Sub(written) < opt.Grace {
			res.Kept++
			continue
		}
		if err := s.Delete(ctx, oi.Key); err != nil {
			if ctx.Err() != nil {
				return res, err
			}
			opt.Logger.Warn("index compaction: deleting a folded segment failed; the next compaction retries",
				"segment", oi.Key, "error", err)
			continue
		}
		res.Deleted++
	}
	return res, nil
}

// lockContent is the JSON body of CompactLockKey.
type lockContent struct {
	Holder  string    `json:"holder"`
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// compactLock is a lock this process holds.
type compactLock struct {
	store   backend.Store
	token   string
	created time.Time // the lock object's modification time: the store's clock
}

// takeLock creates CompactLockKey, breaking a lock past its expiry.
// Breaking is best effort: a store offers no conditional delete, so two
// processes breaking the same stale lock at once may both believe they
// hold it. Compact stays safe then as long as it finishes within Grace.
func takeLock(ctx context.Context, s backend.Store, holder string, ttl time.Duration, now func() time.Time, log *slog.Logger) (*compactLock, error) {
	var tok [8]byte
	rand.Read(tok[:])
	l := &compactLock{store: s, token: hex.EncodeToString(tok[:])}
	body, err := json.Marshal(lockContent{Holder: holder, Token: l.token, Expires: now().Add(ttl).UTC()})
	if err != nil {
		return nil, err
	}
	loc := s.Location() + "/" + CompactLockKey
	for attempt := 0; ; attempt++ {
		err := s.Create(ctx, CompactLockKey, bytes.NewReader(body), int64(len(body)))
		if err == nil {
			if oi, err := s.Stat(ctx, CompactLockKey); err == nil {
				l.created = oi.ModTime
			}
			return l, nil
		}
		if !errors.Is(err, backend.ErrExist) {
			return nil, fmt.Errorf("take index compaction lock %s: %w", loc, err)
		}
		if attempt > 0 {
			return nil, fmt.Errorf("%w: lock %s was taken by another process first", ErrCompactionRunning, loc)
		}
		cur, err := readLock(ctx, s, ttl)
		if errors.Is(err, backend.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read index compaction lock %s: %w", loc, err)
		}
		if now().Before(cur.Expires) {
			return nil, fmt.Errorf("%w: lock %s held by %q until %s", ErrCompactionRunning, loc,
				cur.Holder, cur.Expires.Local().Format(time.RFC3339))
		}
		log.Warn("index compaction: breaking an expired lock (its holder crashed or hangs)",
			"lock", loc, "holder", cur.Holder, "expired", cur.Expires)
		// Read again right before deleting, to not delete a lock someone
		// else has just put in place of the stale one.
		if again, err := readLock(ctx, s, ttl); err == nil && again.Token != cur.Token {
			return nil, fmt.Errorf("%w: lock %s held by %q", ErrCompactionRunning, loc, again.Holder)
		}
		if err := s.Delete(ctx, CompactLockKey); err != nil {
			return nil, fmt.Errorf("break index compaction lock %s: %w", loc, err)
		}
	}
}

// readLock reads the lock. An unreadable lock (not ours to judge) expires
// ttl after it was written.
func readLock(ctx context.Context, s backend.Store, ttl time.Duration) (lockContent, error) {
	oi, err := s.Stat(ctx, CompactLockKey)
	if err != nil {
		return lockContent{}, err
	}
	rc, err := s.Open(ctx, CompactLockKey, 0, 4096)
	if err != nil {
		return lockContent{}, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return lockContent{}, err
	}
	var c lockContent
	if json.Unmarshal(b, &c) != nil || c.Expires.IsZero() {
		c = lockContent{Holder: "(unreadable lock)", Expires: oi.ModTime.Add(ttl)}
	}
	return c, nil
}

// check fails unless the lock is still ours.
func (l *compactLock) check(ctx context.Context) error {
	cur, err := readLock(ctx, l.store, 0)
	if err != nil {
		return fmt.Errorf("index compaction: lost the lock %s/%s: %w", l.store.Location(), CompactLockKey, err)
	}
	if cur.Token != l.token {
		return fmt.Errorf("index compaction: lost the lock %s/%s: broken as expired and now held by %q",
			l.store.Location(), CompactLockKey, cur.Holder)
	}
	return nil
}

// release deletes the lock if it is still ours.
func (l *compactLock) release(ctx context.Context) error {
	cur, err := readLock(ctx, l.store, 0)
	if errors.Is(err, backend.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.Token != l.token {
		return nil // broken and taken by someone else: theirs now
	}
	return l.store.Delete(ctx, CompactLockKey)
}
