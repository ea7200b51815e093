// Package transfer moves whole sstate caches between a local directory and a
// store: Push uploads an existing local sstate-cache (skipping what the store
// has, resumable, recorded in the index), Export writes a plain SSTATE_DIR
// copy of the store, or of some of its objects, for air-gapped sites, SDKs
// and backups.
package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/beneath"
	"github.com/sstatefs/sstatefs/publish"
	"github.com/sstatefs/sstatefs/sstate"
)

// Recorder records objects in the index journal: index.Journal, or
// index.Later, which writes them in batches of up to MaxBatch records;
// Push flushes a Recorder that is a publish.Flusher before it returns.
type Recorder = publish.Recorder

// Progress is told of work done: items and bytes so far out of the totals.
// It is never called concurrently.
type Progress func(doneItems, totalItems int, doneBytes, totalBytes int64)

// PushOptions configure Push.
type PushOptions struct {
	Dir      string // a local SSTATE_DIR
	Store    backend.Store
	Recorder Recorder
	Known    *index.Index // objects the store is known to have (may be nil)
	Jobs     int          // uploads at once, default 8
	Progress Progress
	Logger   *slog.Logger
}

// PushResult counts what Push did.
type PushResult struct {
	Uploaded, Skipped, Existing, Conflicts, Ignored int
	// Symlinks counts links under sstate object names, which are never
	// followed (bitbake links objects it fetched from a file:// mirror
	// into SSTATE_DIR, and a link can point anywhere, /etc/shadow too);
	// BadNames counts names with control characters. Both are warned
	// about one by one.
	Symlinks, BadNames int
	UploadedBytes      int64
	Failed             []error
}

type localObject struct {
	key  string
	size int64
}

// scan lists the sstate objects under root. Other files (temp files, locks,
// anything not of the sstate name grammar) are counted as ignored; links
// under sstate names and names with control characters are counted and
// warned about. Nothing is followed through a link.
func scan(root *os.File, dir string, log *slog.Logger, res *PushResult) ([]localObject, error) {
	var objs []localObject
	err := beneath.Walk(root, func(key string, fi fs.FileInfo) error {
		_, perr := sstate.Parse(key)
		switch {
		case errors.Is(perr, sstate.ErrControlChar):
			res.BadNames++
			// slog quotes the value (%q) in text and escapes it in JSON, so
			// the newline cannot forge a log line.
			log.Warn("not pushed: the name holds a control character", "file", filepath.Join(dir, key))
		case perr != nil:
			res.Ignored++
		case fi.Mode()&fs.ModeSymlink != 0:
			res.Symlinks++
			log.Warn("not pushed: a symbolic link (never followed; bitbake links objects from a file:// SSTATE_MIRRORS in: push the mirror itself)", "file", filepath.Join(dir, key))
		case !fi.Mode().IsRegular():
			res.Ignored++
		default:
			objs = append(objs, localObject{key: key, size: fi.Size()})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", dir, err)
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].key < objs[j].key })
	return objs, nil
}

// Push uploads the sstate objects of a local directory that the store does
// not have yet, in parallel. Objects are created conditionally (an existing
// object is never replaced) and recorded in the journal only once they are
// in the store. Running it again after an interruption finishes the job.
func Push(ctx context.Context, opt PushOptions) (PushResult, error) {
	var res PushResult
	if opt.Jobs <= 0 {
		opt.Jobs = 8
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if backend.IsReadOnly(opt.Store) {
		return res, fmt.Errorf("push to %s: %w", opt.Store.Location(), backend.ErrReadOnly)
	}
	// The directory itself is the caller's choice and may be a link; below
	// it nothing is followed.
	root, err := beneath.OpenRoot(opt.Dir)
	if err != nil {
		return res, err
	}
	defer root.Close()
	objs, err := scan(root, opt.Dir, opt.Logger, &res)
	if err != nil {
		return res, err
	}
	var todo []localObject
	for _, o := range objs {
		if k, ok := opt.Known.Lookup(o.key); ok && k.Size == o.size {
			res.Skipped++
			continue
		}
		todo = append(todo, o)
	}
	type pushed struct {
		out publish.Outcome
		err error
	}
	err = each(ctx, opt.Jobs, todo, func(o localObject) int64 { return o.size }, opt.Progress,
		func(ctx context.Context, o localObject) pushed {
			out, err := pushOne(ctx, opt, root, o)
			return pushed{out, err}
		},
		func(o localObject, p pushed) {
			switch p.out {
			case publish.Failed:
				res.Failed = append(res.Failed, fmt.Errorf("%s: %w", o.key, p.err))
				opt.Logger.Error("push failed", "object", o.key, "error", p.err)
			case publish.Created:
				res.Uploaded++
				res.UploadedBytes += o.size
			case publish.AlreadyThere:
				res.Existing++
			case publish.Conflict:
				res.Conflicts++
				opt.Logger.Warn("not pushed: the store has other content under this name (first writer wins)", "object", o.key)
			}
		})
	if fl, ok := opt.Recorder.(publish.Flusher); ok {
		// a batching recorder (index.Later) holds the last records: they
		// go into the store before Push returns, even when ctx has ended
		// (the objects are in the store)
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
		ferr := fl.Flush(fctx)
		cancel()
		if ferr != nil && err == nil {
			err = fmt.Errorf("recording pushed objects in the index: %w", ferr)
		}
	}
	if err != nil {
		return res, err
	}
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d of %d objects failed, first: %w", len(res.Failed), len(todo), res.Failed[0])
	}
	return res, nil
}

// flushTimeout bounds the write of Push's last index records.
const flushTimeout = time.Minute

// pushOne uploads one local object by the upload rules (publish.Put).
func pushOne(ctx context.Context, opt PushOptions, root *os.File, o localObject) (publish.Outcome, error) {
	// Opened once, below the root without links (the file may have been
	// replaced by one since the scan), then hashed and uploaded from the
	// same descriptor.
	f, err := beneath.Open(root, o.key)
	if err != nil {
		return publish.Failed, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return publish.Failed, err
	}
	if !fi.Mode().IsRegular() {
		return publish.Failed, fmt.Errorf("%s: not a regular file", o.key)
	}
	size := fi.Size()
	sum, chunks, _, err := index.Digest(io.NewSectionReader(f, 0, size))
	if err != nil {
		return publish.Failed, err
	}
	return publish.Put(ctx, opt.Store, opt.Recorder, publish.Upload{Key: o.key, Data: f, Size: size, SHA256: sum, Chunks: chunks}, nil)
}

// each runs work on every item, jobs at once, and tallies each result:
// tally and progress are called under one lock, never concurrently. A
// failed item does not stop the others; only the end of ctx does.
func each[T, R any](ctx context.Context, jobs int, items []T, size func(T) int64, progress Progress,
	work func(context.Context, T) R, tally func(T, R)) error {
	var total int64
	for _, it := range items {
		total += size(it)
	}
	if progress != nil {
		progress(0, len(items), 0, total)
	}
	var mu sync.Mutex // protects done, doneBytes and what tally changes
	var done int
	var doneBytes int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, it := range items {
		g.Go(func() error {
			r := work(gctx, it)
			mu.Lock()
			defer mu.Unlock()
			tally(it, r)
			done++
			doneBytes += size(it)
			if progress != nil {
				progress(done, len(items), doneBytes, total)
			}
			return gctx.Err()
		})
	}
	return g.Wait()
}

// ExportOptions configure Export.
type ExportOptions struct {
	Dir   string // destination SSTATE_DIR, created if missing
	Store backend.Store
	Index *index.Index // the store's objects (nil: list the store)
	// Keys limits the export to these objects (and their .siginfo/.sig
	// companions when the index knows them); empty means everything.
	Keys     []string
	Jobs     int
	Progress Progress
	Logger   *slog.Logger
}

// ExportResult counts what Export did.
type ExportResult struct {
	Written, Skipped int
	Missing          []string // listed keys the store does not have
	Invalid          []error  // listed keys that are not valid object keys (skipped)
	WrittenBytes     int64
	Failed           []error
}

// Export writes the store's objects into a plain SSTATE_DIR. Objects already
// there with the right size are skipped, so an interrupted export resumes.
// Each object is written to a temp file, verified against the index digest
// where known, given the store's mtime and renamed into place.
func Export(ctx context.Context, opt ExportOptions) (ExportResult, error) {
	var res ExportResult
	if opt.Jobs <= 0 {
		opt.Jobs = 8
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	objs, err := exportSet(ctx, opt, &res)
	if err != nil {
		return res, err
	}
	// The destination directory is the caller's choice (and may be a
	// link); below it nothing is written through a link: one planted in
	// the tree is replaced, a linked directory refused.
	if err := os.MkdirAll(opt.Dir, 0o755); err != nil {
		return res, err
	}
	root, err := beneath.OpenRoot(opt.Dir)
	if err != nil {
		return res, err
	}
	defer root.Close()
	var todo []index.Object
	for _, o := range objs {
		if fi, err := beneath.Lstat(root, o.Key); err == nil && fi.Mode().IsRegular() && fi.Size() == o.Size {
			res.Skipped++
			continue
		}
		todo = append(todo, o)
	}
	err = each(ctx, opt.Jobs, todo, func(o index.Object) int64 { return o.Size }, opt.Progress,
		func(ctx context.Context, o index.Object) error { return exportOne(ctx, opt, root, o) },
		func(o index.Object, err error) {
			if err != nil {
				res.Failed = append(res.Failed, fmt.Errorf("%s: %w", o.Key, err))
				opt.Logger.Error("export failed", "object", o.Key, "error", err)
			} else {
				res.Written++
				res.WrittenBytes += o.Size
			}
		})
	if err != nil {
		return res, err
	}
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d objects failed, first: %w", len(res.Failed), res.Failed[0])
	}
	return res, nil
}

// exportSet decides which objects to export. A listed key that is invalid,
// or whose Stat fails, is recorded in res and the others go on.
func exportSet(ctx context.Context, opt ExportOptions, res *ExportResult) ([]index.Object, error) {
	if len(opt.Keys) > 0 {
		var objs []index.Object
		seen := map[string]bool{}
		add := func(o index.Object) {
			if !seen[o.Key] {
				seen[o.Key] = true
				objs = append(objs, o)
			}
		}
		for _, k := range opt.Keys {
			k = strings.TrimPrefix(strings.TrimSpace(k), "/")
			if k == "" || strings.HasPrefix(k, "#") {
				continue
			}
			if err := backend.CheckKey(k); err != nil {
				res.Invalid = append(res.Invalid, err)
				continue
			}
			if o, ok := opt.Index.Lookup(k); ok {
				add(o)
			} else if oi, err := opt.Store.Stat(ctx, k); err == nil {
				add(index.Object{Key: k, Size: oi.Size, ModTime: oi.ModTime})
			} else if errors.Is(err, backend.ErrNotExist) {
				res.Missing = append(res.Missing, k)
				continue
			} else if ctx.Err() != nil {
				return nil, err
			} else {
				res.Failed = append(res.Failed, fmt.Errorf("%s: %w", k, err))
				continue
			}
			for _, c := range []string{".siginfo", ".sig"} {
				if o, ok := opt.Index.Lookup(k + c); ok {
					add(o)
				}
			}
		}
		return objs, nil
	}
	if opt.Index != nil && opt.Index.Len() > 0 {
		var objs []index.Object
		opt.Index.Objects(func(o index.Object) bool { objs = append(objs, o); return true })
		return objs, nil
	}
	var objs []index.Object
	err := opt.Store.List(ctx, "", func(oi backend.ObjectInfo) error {
		if backend.IsMeta(oi.Key) {
			return nil
		}
		objs = append(objs, index.Object{Key: oi.Key, Size: oi.Size, ModTime: oi.ModTime})
		return nil
	})
	if errors.Is(err, backend.ErrNotSupported) {
		return nil, fmt.Errorf("%s has no index and cannot be listed: give the objects to export in a list file", opt.Store.Location())
	}
	return objs, err
}

func exportOne(ctx context.Context, opt ExportOptions, root *os.File, o index.Object) error {
	dir, base := path.Split(o.Key)
	d, err := beneath.Dir(root, strings.TrimSuffix(dir, "/"), true, 0o755)
	if err != nil {
		return err
	}
	defer d.Close()
	rc, err := opt.Store.Open(ctx, o.Key, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, name, err := beneath.CreateTemp(d, "."+base+".export-", "")
	if err != nil {
		return err
	}
	dfd := int(d.Fd())
	defer unix.Unlinkat(dfd, name, 0) // after the rename: ENOENT, ignored
	sum, n, err := index.CopySum(tmp, rc)
	if err == nil {
		err = tmp.Chmod(0o664)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != o.Size {
		return fmt.Errorf("got %d bytes, want %d", n, o.Size)
	}
	if o.SHA256 != ([32]byte{}) && sum != o.SHA256 {
		return fmt.Errorf("sha256 %s does not match the index (%s)", hex.EncodeToString(sum[:]), hex.EncodeToString(o.SHA256[:]))
	}
	if !o.ModTime.IsZero() {
		ts := unix.NsecToTimespec(o.ModTime.UnixNano())
		unix.UtimesNanoAt(dfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}
	// rename replaces a link planted under the final name; it never
	// writes through it.
	if err := unix.Renameat(dfd, name, dfd, base); err != nil {
		return &fs.PathError{Op: "rename", Path: filepath.Join(opt.Dir, o.Key), Err: err}
	}
	return nil
}
