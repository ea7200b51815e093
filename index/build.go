package index

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sstatefs/sstatefs/backend"
)

// BuildOptions tunes Build.
type BuildOptions struct {
	// Concurrency is the number of objects read at once for hashing;
	// 0 means 8.
	Concurrency int
	// Previous, if set, lends its SHA-256 to objects whose key, size and
	// modification time are unchanged, so they are not read again.
	Previous *Index
	// Progress, if set, is called as objects are hashed: done of total
	// objects that need reading (reused digests are not counted), bytes
	// read so far. It is called once with done == 0 before hashing starts,
	// never concurrently, with done increasing.
	Progress func(done, total int, bytes int64)
	// Logger receives unreadable journal segments and a damaged snapshot
	// (which Build replaces); nil discards them.
	Logger *slog.Logger
}

// Build lists s (skipping keys under backend.MetaPrefix and temp files, see
// isTempName), hashes each object by streaming it through s.Open, and
// returns the complete index (see Sources), created at the time the listing
// started. Objects that vanish during the build are skipped; any other
// error fails the build, naming the key.
//
// If an object's content is not the size the listing reported (it was
// replaced meanwhile), the index records the size that was hashed, so size
// and digest always agree.
//
// Mounts may keep publishing while Build runs; nothing they record is lost.
// Build lists the journal before the store: the objects of the segments it
// finds are already in the store (an object is written before its record),
// so the index covers those segments. After hashing, it loads the current
// index (snapshot and journal, as LoadAll) and adds the objects recorded
// there that its listing missed (published after the listing passed their
// names), once a Stat shows they are still in the store; it takes the
// access times and every equivalence record from there too (a listing of
// the store cannot restore those), and covers what that index covers.
// Save the result promptly: a compaction in between deletes folded
// segments older than its grace period.
func Build(ctx context.Context, s backend.Store, opt BuildOptions) (*Index, error) {
	conc := opt.Concurrency
	if conc <= 0 {
		conc = 8
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	created := time.Now()
	var journal []string
	err := s.List(ctx, JournalPrefix, func(oi backend.ObjectInfo) error {
		if _, ok := parseSegmentKey(oi.Key); ok {
			journal = append(journal, oi.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("build index of %s: list the journal: %w", s.Location(), err)
	}
	var objs []Object
	err = s.List(ctx, "", func(oi backend.ObjectInfo) error {
		if backend.IsMeta(oi.Key) || isTempName(oi.Key) {
			return nil
		}
		objs = append(objs, Object{Key: oi.Key, Size: oi.Size, ModTime: oi.ModTime})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("build index of %s: %w", s.Location(), err)
	}

	var todo []int // positions in objs that need reading
	for i := range objs {
		o := &objs[i]
		// An object large enough for chunk digests is read again if the
		// previous index (of an older sstatefs) has none.
		if p, ok := opt.Previous.Lookup(o.Key); ok && p.SHA256 != ([32]byte{}) &&
			p.Size == o.Size && p.ModTime.Equal(o.ModTime) && len(p.Chunks) == NumChunks(p.Size) {
			o.SHA256, o.Chunks = p.SHA256, p.Chunks
			continue
		}
		todo = append(todo, i)
	}

	var (
		progressMu sync.Mutex // serialises Progress calls and guards done, read
		done       int
		read       int64
	)
	report := func(n int64) {
		if opt.Progress == nil {
			return
		}
		progressMu.Lock()
		defer progressMu.Unlock()
		done++
		read += n
		opt.Progress(done, len(todo), read)
	}
	if opt.Progress != nil {
		opt.Progress(0, len(todo), 0)
	}

	vanished := make([]bool, len(objs)) // each worker writes only its own positions
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range min(conc, len(todo)) {
		g.Go(func() error {
			for {
				t := int(next.Add(1) - 1)
				if t >= len(todo) {
					return nil
				}
				o := &objs[todo[t]]
				sum, chunks, n, err := hashObject(gctx, s, o.Key)
				switch {
				case errors.Is(err, backend.ErrNotExist):
					vanished[todo[t]] = true
				case err != nil:
					return fmt.Errorf("build index of %s: hash %s: %w", s.Location(), o.Key, err)
				default:
					o.SHA256, o.Chunks, o.Size = sum, chunks, n
				}
				report(n)
			}
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	kept := objs[:0]
	for i, o := range objs {
		if !vanished[i] {
			kept = append(kept, o)
		}
	}
	return withJournal(ctx, s, New(kept, created), journal, conc, opt.Logger)
}

// withJournal completes a freshly built index with what the current index
// of s knows and the listing missed (see Build).
func withJournal(ctx context.Context, s backend.Store, built *Index, journal []string, conc int, log *slog.Logger) (*Index, error) {
	res, err := newLoader(s, log).load(ctx, func(ctx context.Context) (*Index, backend.ObjectInfo, error) {
		ix, err := LoadSnapshot(ctx, s)
		if errors.Is(err, ErrCorrupt) {
			log.Warn("the index snapshot is damaged; the new one replaces it", "error", err)
			return nil, backend.ObjectInfo{}, fmt.Errorf("%w (%v)", ErrNoIndex, err)
		}
		return ix, backend.ObjectInfo{}, err
	}, nil, "")
	if errors.Is(err, ErrNoIndex) {
		// No snapshot and no readable segment: nothing to add, and the
		// segments there are stay uncovered (readers skip them anyway).
		return built, nil
	}
	if err != nil {
		return nil, fmt.Errorf("build index of %s: %w", s.Location(), err)
	}
	cur := res.ix

	objs := make([]Object, 0, built.Len())
	var missing []Object
	built.Objects(func(o Object) bool {
		if c, ok := cur.Lookup(o.Key); ok {
			o.Accessed = c.Accessed
		}
		objs = append(objs, o)
		return true
	})
	cur.Objects(func(o Object) bool {
		if _, ok := built.Lookup(o.Key); !ok {
			missing = append(missing, o)
		}
		return true
	})
	found := make([]bool, len(missing))
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range min(conc, len(missing)) {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(missing) {
					return nil
				}
				o := &missing[i]
				oi, err := s.Stat(gctx, o.Key)
				switch {
				case errors.Is(err, backend.ErrNotExist):
					continue // deleted from the store: gone from the index
				case err != nil:
					return fmt.Errorf("build index of %s: stat %s: %w", s.Location(), o.Key, err)
				}
				if oi.Size != o.Size || o.SHA256 == ([32]byte{}) || len(o.Chunks) != NumChunks(o.Size) {
					// Not what was recorded (replaced?), or recorded
					// without chunk digests: hash what is there.
					sum, chunks, n, err := hashObject(gctx, s, o.Key)
					if errors.Is(err, backend.ErrNotExist) {
						continue
					}
					if err != nil {
						return fmt.Errorf("build index of %s: hash %s: %w", s.Location(), o.Key, err)
					}
					o.SHA256, o.Chunks, o.Size, o.ModTime = sum, chunks, n, oi.ModTime
				}
				found[i] = true
			}
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for i, o := range missing {
		if found[i] {
			objs = append(objs, o)
		}
	}
	ix := New(objs, built.Created())
	// The equivalences and sign-offs as they are: runs are immutable, so sharing is safe.
	ix.eqBase, ix.eqExtra = cur.eqBase, cur.eqExtra
	ix.sigBase, ix.sigExtra = cur.sigBase, cur.sigExtra
	// Cover the segments listed before the store, and those the current
	// index includes, but never one that could not be read: it may hold
	// records of a newer sstatefs.
	skipped := map[string]bool{}
	for _, k := range res.skipped {
		skipped[k] = true
	}
	ix.covered = slices.DeleteFunc(unionSorted(cur.covered, journal), func(k string) bool { return skipped[k] })
	return ix, nil
}

// hashObject reads key from the store and returns its digest, its chunk
// digests and its length.
func hashObject(ctx context.Context, s backend.Store, key string) ([32]byte, [][32]byte, int64, error) {
	rc, err := s.Open(ctx, key, 0, -1)
	if err != nil {
		return [32]byte{}, nil, 0, err
	}
	defer rc.Close()
	return Digest(rc)
}

// isTempName reports whether key names a file that is being written rather
// than an object: the file store's own temp files, bitbake's (a package is
// written to "<final name><8 random characters>" and hard-linked, a siginfo
// to "sigtask.<random>" and renamed; see compat/bitbake-sstate-syscalls.md)
// and a mirror download's "P.tmp" and lock "P.lock".
func isTempName(key string) bool {
	base := path.Base(key)
	if strings.Contains(base, ".sstatefs-tmp") || strings.HasPrefix(base, "sigtask.") ||
		strings.HasSuffix(base, ".tmp") || strings.HasSuffix(base, ".lock") {
		return true
	}
	// Python's NamedTemporaryFile appends 8 characters of [a-z0-9_].
	if len(base) < 8 {
		return false
	}
	stem, tail := base[:len(base)-8], base[len(base)-8:]
	if !strings.HasSuffix(stem, ".tar.zst") && !strings.HasSuffix(stem, ".tgz") {
		return false
	}
	for i := 0; i < len(tail); i++ {
		c := tail[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
