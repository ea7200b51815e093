// Package transfer moves whole sstate caches between a local directory and a
// store: Push uploads an existing local sstate-cache (skipping what the store
// has, resumable, recorded in the index), Export writes a plain SSTATE_DIR
// copy of a store, or of several stores merged in trust order, or of some
// of their objects, for air-gapped sites, SDKs and backups.
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

// Source is one store an export reads from.
type Source struct {
	Name  string // in messages and counts (default: the store's location)
	Store backend.Store
	Index *index.Index // the store's objects (nil or empty: list the store)
}

func (s Source) label() string {
	if s.Name != "" {
		return s.Name
	}
	return s.Store.Location()
}

// ExportOptions configure Export.
type ExportOptions struct {
	Dir string // destination SSTATE_DIR, created if missing
	// Sources are the stores to export, most trusted first: a name that
	// several of them hold is taken from the first that has it, as the
	// mount resolves names (the merged view).
	Sources []Source
	// Keys limits the export to these objects (and their .siginfo/.sig
	// companions when an index knows them); empty means everything.
	Keys     []string
	Jobs     int
	Progress Progress
	Logger   *slog.Logger
}

// ExportResult counts what Export did.
type ExportResult struct {
	Written, Skipped int
	Missing          []string // listed keys no source has
	Invalid          []error  // listed keys that are not valid object keys (skipped)
	// Unlisted names the sources left out of a whole export of several
	// sources because they have no index and cannot be listed (a plain
	// HTTP mirror); with a single source that is an error instead.
	Unlisted     []string
	WrittenBytes int64
	// BySource is what was taken from each source, in the order of Sources.
	BySource []SourceCount
	Failed   []error
}

// SourceCount is what Export took from one source.
type SourceCount struct {
	Written, Skipped int
	WrittenBytes     int64
}

// exportItem is an object to export and the index in Sources of the store
// it comes from.
type exportItem struct {
	index.Object
	src int
}

// Export writes the objects of the sources into a plain SSTATE_DIR. Objects
// already there with the right size are skipped, so an interrupted export
// resumes. Each object is written to a temp file, verified against the index
// digest where known, given the store's mtime and renamed into place.
func Export(ctx context.Context, opt ExportOptions) (ExportResult, error) {
	res := ExportResult{BySource: make([]SourceCount, len(opt.Sources))}
	if len(opt.Sources) == 0 {
		return res, errors.New("export: no store to export")
	}
	if opt.Jobs <= 0 {
		opt.Jobs = 8
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	items, err := exportSet(ctx, opt, &res)
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
	var todo []exportItem
	for _, it := range items {
		if fi, err := beneath.Lstat(root, it.Key); err == nil && fi.Mode().IsRegular() && fi.Size() == it.Size {
			res.Skipped++
			res.BySource[it.src].Skipped++
			continue
		}
		todo = append(todo, it)
	}
	err = each(ctx, opt.Jobs, todo, func(it exportItem) int64 { return it.Size }, opt.Progress,
		func(ctx context.Context, it exportItem) error {
			return exportOne(ctx, opt.Sources[it.src].Store, root, opt.Dir, it.Object)
		},
		func(it exportItem, err error) {
			if err != nil {
				from := opt.Sources[it.src].label()
				res.Failed = append(res.Failed, fmt.Errorf("%s (from %s): %w", it.Key, from, err))
				opt.Logger.Error("export failed", "object", it.Key, "store", from, "error", err)
				return
			}
			res.Written++
			res.WrittenBytes += it.Size
			res.BySource[it.src].Written++
			res.BySource[it.src].WrittenBytes += it.Size
		})
	if err != nil {
		return res, err
	}
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d objects failed, first: %w", len(res.Failed), res.Failed[0])
	}
	return res, nil
}

// exportSet decides which objects to export, and from which source. A
// listed key that is invalid, or whose Stat fails, is recorded in res and
// the others go on.
func exportSet(ctx context.Context, opt ExportOptions, res *ExportResult) ([]exportItem, error) {
	if len(opt.Keys) == 0 {
		return exportAll(ctx, opt.Sources, res)
	}
	var items []exportItem
	seen := map[string]bool{}
	add := func(o index.Object, src int) {
		if !seen[o.Key] {
			seen[o.Key] = true
			items = append(items, exportItem{o, src})
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
		o, src, err := locate(ctx, opt.Sources, k)
		switch {
		case err == nil:
			add(o, src)
		case errors.Is(err, backend.ErrNotExist):
			res.Missing = append(res.Missing, k)
			continue
		case ctx.Err() != nil:
			return nil, err
		default:
			res.Failed = append(res.Failed, fmt.Errorf("%s: %w", k, err))
			continue
		}
		for _, c := range []string{".siginfo", ".sig"} {
			for i, s := range opt.Sources {
				if o, ok := s.Index.Lookup(k + c); ok {
					add(o, i)
					break
				}
			}
		}
	}
	return items, nil
}

// locate finds key in the first source that has it: in its index, else by
// asking the store (the index may be older than the store). A source that
// cannot answer ends the search with its error: a less trusted source
// must not stand in for a more trusted one that may have other bytes.
func locate(ctx context.Context, sources []Source, key string) (index.Object, int, error) {
	for i, s := range sources {
		if o, ok := s.Index.Lookup(key); ok {
			return o, i, nil
		}
		oi, err := s.Store.Stat(ctx, key)
		if err == nil {
			return index.Object{Key: key, Size: oi.Size, ModTime: oi.ModTime}, i, nil
		}
		if !errors.Is(err, backend.ErrNotExist) {
			return index.Object{}, i, fmt.Errorf("store %s: %w", s.label(), err)
		}
	}
	return index.Object{}, -1, backend.ErrNotExist
}

// exportAll lists every object of the sources, each name from the first
// source that has it. A source is listed from its index, else from the
// store; one that can be neither is an error when it is the only source,
// and otherwise left out and named in res.Unlisted.
func exportAll(ctx context.Context, sources []Source, res *ExportResult) ([]exportItem, error) {
	var items []exportItem
	// has tells, for each source already listed, whether it holds a name:
	// its index, or the names its listing gave.
	var has []func(string) bool
	for i, s := range sources {
		add := func(o index.Object) {
			for _, h := range has {
				if h(o.Key) {
					return // a more trusted source's
				}
			}
			items = append(items, exportItem{o, i})
		}
		if s.Index.Len() > 0 {
			s.Index.Objects(func(o index.Object) bool { add(o); return true })
			has = append(has, func(k string) bool { _, ok := s.Index.Lookup(k); return ok })
			continue
		}
		listed := map[string]bool{}
		err := s.Store.List(ctx, "", func(oi backend.ObjectInfo) error {
			if backend.IsMeta(oi.Key) {
				return nil
			}
			if len(sources) > 1 {
				listed[oi.Key] = true
			}
			add(index.Object{Key: oi.Key, Size: oi.Size, ModTime: oi.ModTime})
			return nil
		})
		switch {
		case errors.Is(err, backend.ErrNotSupported) && len(sources) == 1:
			return nil, fmt.Errorf("%s has no index and cannot be listed: give the objects to export in a list file", s.Store.Location())
		case errors.Is(err, backend.ErrNotSupported):
			res.Unlisted = append(res.Unlisted, s.label())
		case err != nil:
			return nil, fmt.Errorf("list store %s: %w", s.label(), err)
		}
		has = append(has, func(k string) bool { return listed[k] })
	}
	return items, nil
}

// exportOne writes one object of store below root (rootDir, for messages).
func exportOne(ctx context.Context, store backend.Store, root *os.File, rootDir string, o index.Object) error {
	dir, base := path.Split(o.Key)
	d, err := beneath.Dir(root, strings.TrimSuffix(dir, "/"), true, 0o755)
	if err != nil {
		return err
	}
	defer d.Close()
	rc, err := store.Open(ctx, o.Key, 0, -1)
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
		return &fs.PathError{Op: "rename", Path: filepath.Join(rootDir, o.Key), Err: err}
	}
	return nil
}
