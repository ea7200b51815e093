// Package transfer moves whole sstate caches between a local directory and a
// store: Push uploads an existing local sstate-cache (skipping what the store
// has, resumable, recorded in the index), Export writes a plain SSTATE_DIR
// copy of the store, or of some of its objects, for air-gapped sites, SDKs
// and backups.
package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/sstate"
)

// Recorder records objects in the index journal (index.Journal).
type Recorder interface {
	Added(ctx context.Context, o index.Object) error
}

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
	UploadedBytes                                   int64
	Failed                                          []error
}

type localObject struct {
	key  string
	path string
	size int64
}

// scan lists the sstate objects under dir; other files (temp files, locks,
// anything not of the sstate name grammar) are counted as ignored.
func scan(dir string) ([]localObject, int, error) {
	var objs []localObject
	ignored := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if _, err := sstate.Parse(key); err != nil {
			ignored++
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		objs = append(objs, localObject{key: key, path: p, size: fi.Size()})
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("scan %s: %w", dir, err)
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].key < objs[j].key })
	return objs, ignored, nil
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
	objs, ignored, err := scan(opt.Dir)
	if err != nil {
		return res, err
	}
	res.Ignored = ignored
	var todo []localObject
	var total int64
	for _, o := range objs {
		if k, ok := opt.Known.Lookup(o.key); ok && k.Size == o.size {
			res.Skipped++
			continue
		}
		todo = append(todo, o)
		total += o.size
	}
	var mu sync.Mutex // protects res
	var done atomic.Int64
	var doneBytes atomic.Int64
	report := func(n int64) {
		if opt.Progress != nil {
			opt.Progress(int(done.Add(1)), len(todo), doneBytes.Add(n), total)
		}
	}
	if opt.Progress != nil {
		opt.Progress(0, len(todo), 0, total)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opt.Jobs)
	for _, o := range todo {
		g.Go(func() error {
			outcome, err := pushOne(gctx, opt, o)
			mu.Lock()
			switch {
			case err != nil:
				res.Failed = append(res.Failed, fmt.Errorf("%s: %w", o.key, err))
				opt.Logger.Error("push failed", "object", o.key, "error", err)
			case outcome == "uploaded":
				res.Uploaded++
				res.UploadedBytes += o.size
			case outcome == "existing":
				res.Existing++
			case outcome == "conflict":
				res.Conflicts++
				opt.Logger.Warn("not pushed: the store has other content under this name (first writer wins)", "object", o.key)
			}
			report(o.size) // under mu: Progress is never called concurrently
			mu.Unlock()
			return gctx.Err() // only cancellation stops the others
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d of %d objects failed, first: %w", len(res.Failed), len(todo), res.Failed[0])
	}
	return res, nil
}

// hashFile returns the digest of the file at p and its chunk digests (for
// the index), in one pass.
func hashFile(p string) ([32]byte, [][32]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return [32]byte{}, nil, err
	}
	defer f.Close()
	d := index.NewDigester()
	if _, err := io.Copy(d, f); err != nil {
		return [32]byte{}, nil, err
	}
	sum, chunks := d.Sum()
	return sum, chunks, nil
}

func pushOne(ctx context.Context, opt PushOptions, o localObject) (string, error) {
	sum, chunks, err := hashFile(o.path)
	if err != nil {
		return "", err
	}
	f, err := os.Open(o.path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	outcome := "uploaded"
	err = opt.Store.Create(backend.WithSHA256(ctx, sum), o.key, io.NewSectionReader(f, 0, o.size), o.size)
	if errors.Is(err, backend.ErrExist) {
		theirs, herr := hashStore(ctx, opt.Store, o.key)
		if herr != nil {
			return "", fmt.Errorf("exists in the store, comparing: %w", herr)
		}
		if theirs != sum {
			return "conflict", nil
		}
		outcome, err = "existing", nil
	}
	if err != nil {
		return "", err
	}
	oi, err := opt.Store.Stat(ctx, o.key)
	if err != nil {
		return "", err
	}
	if index.NumChunks(oi.Size) != len(chunks) {
		chunks = nil // not the size hashed: the record must not claim them
	}
	if err := opt.Recorder.Added(ctx, index.Object{Key: o.key, Size: oi.Size, ModTime: oi.ModTime, SHA256: sum, Chunks: chunks}); err != nil {
		return "", fmt.Errorf("recording in the index: %w", err)
	}
	return outcome, nil
}

func hashStore(ctx context.Context, s backend.Store, key string) ([32]byte, error) {
	rc, err := s.Open(ctx, key, 0, -1)
	if err != nil {
		return [32]byte{}, err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
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
	objs, missing, err := exportSet(ctx, opt)
	if err != nil {
		return res, err
	}
	res.Missing = missing
	var todo []index.Object
	var total int64
	for _, o := range objs {
		if fi, err := os.Stat(filepath.Join(opt.Dir, filepath.FromSlash(o.Key))); err == nil && fi.Size() == o.Size {
			res.Skipped++
			continue
		}
		todo = append(todo, o)
		total += o.Size
	}
	if opt.Progress != nil {
		opt.Progress(0, len(todo), 0, total)
	}
	var mu sync.Mutex
	var done, doneBytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opt.Jobs)
	for _, o := range todo {
		g.Go(func() error {
			err := exportOne(gctx, opt, o)
			mu.Lock()
			if err != nil {
				res.Failed = append(res.Failed, fmt.Errorf("%s: %w", o.Key, err))
				opt.Logger.Error("export failed", "object", o.Key, "error", err)
			} else {
				res.Written++
				res.WrittenBytes += o.Size
			}
			if opt.Progress != nil {
				opt.Progress(int(done.Add(1)), len(todo), doneBytes.Add(o.Size), total)
			}
			mu.Unlock()
			return gctx.Err()
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d of %d objects failed, first: %w", len(res.Failed), len(todo), res.Failed[0])
	}
	return res, nil
}

// exportSet decides which objects to export.
func exportSet(ctx context.Context, opt ExportOptions) ([]index.Object, []string, error) {
	var missing []string
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
				return nil, nil, err
			}
			if o, ok := opt.Index.Lookup(k); ok {
				add(o)
			} else if oi, err := opt.Store.Stat(ctx, k); err == nil {
				add(index.Object{Key: k, Size: oi.Size, ModTime: oi.ModTime})
			} else if errors.Is(err, backend.ErrNotExist) {
				missing = append(missing, k)
				continue
			} else {
				return nil, nil, err
			}
			for _, c := range []string{".siginfo", ".sig"} {
				if o, ok := opt.Index.Lookup(k + c); ok {
					add(o)
				}
			}
		}
		return objs, missing, nil
	}
	if opt.Index != nil && opt.Index.Len() > 0 {
		var objs []index.Object
		opt.Index.Objects(func(o index.Object) bool { objs = append(objs, o); return true })
		return objs, nil, nil
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
		return nil, nil, fmt.Errorf("%s has no index and cannot be listed: give the objects to export in a list file", opt.Store.Location())
	}
	return objs, nil, err
}

func exportOne(ctx context.Context, opt ExportOptions, o index.Object) error {
	dst := filepath.Join(opt.Dir, filepath.FromSlash(o.Key))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	rc, err := opt.Store.Open(ctx, o.Key, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".export-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), rc)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != o.Size {
		return fmt.Errorf("got %d bytes, want %d", n, o.Size)
	}
	if o.SHA256 != ([32]byte{}) && [32]byte(h.Sum(nil)) != o.SHA256 {
		return fmt.Errorf("sha256 %s does not match the index (%s)", hex.EncodeToString(h.Sum(nil)), hex.EncodeToString(o.SHA256[:]))
	}
	if err := os.Chmod(tmp.Name(), 0o664); err != nil {
		return err
	}
	if !o.ModTime.IsZero() {
		os.Chtimes(tmp.Name(), o.ModTime, o.ModTime)
	}
	return os.Rename(tmp.Name(), dst)
}
