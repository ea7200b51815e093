// Package file is the store of a local directory laid out as an SSTATE_DIR
// (file:///path): the embedded default of sstatefs, and a way to serve an
// existing sstate-cache or NFS share through the mount.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/sstatefs/sstatefs/backend"
)

// Store serves objects from a directory.
type Store struct {
	root string
}

var _ backend.Store = (*Store)(nil)

// New returns a store rooted at dir, creating the directory if needed.
func New(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("file store %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	return &Store{root: abs}, nil
}

// ParseURL returns the directory of a file:// URL (file:///abs/path).
func ParseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("store URL %q: %w", raw, err)
	}
	if u.Scheme != "file" {
		return "", fmt.Errorf("store URL %q: not a file:// URL", raw)
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("store URL %q: file:// URLs take no host (use file:///abs/path)", raw)
	}
	if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
		return "", fmt.Errorf("store URL %q: needs an absolute path (file:///abs/path)", raw)
	}
	return filepath.Clean(u.Path), nil
}

// Location implements backend.Store.
func (s *Store) Location() string { return "file://" + s.root }

// Root is the directory the store serves.
func (s *Store) Root() string { return s.root }

func (s *Store) path(key string) (string, error) {
	if err := backend.CheckKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

func mapErr(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular) {
		return fmt.Errorf("%s: %w", key, backend.ErrNotExist)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", key, backend.ErrExist)
	}
	return fmt.Errorf("%s: %w", key, err)
}

var errNotRegular = errors.New("not a regular file")

// Stat implements backend.Store.
func (s *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err == nil && !fi.Mode().IsRegular() {
		err = errNotRegular
	}
	if err != nil {
		return backend.ObjectInfo{}, mapErr(key, err)
	}
	return backend.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Open implements backend.Store.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, mapErr(key, err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errNotRegular
	}
	if err != nil {
		f.Close()
		return nil, mapErr(key, err)
	}
	if offset < 0 || offset > fi.Size() {
		f.Close()
		return nil, fmt.Errorf("%s: offset %d outside object of %d bytes", key, offset, fi.Size())
	}
	if length < 0 || offset+length > fi.Size() {
		length = fi.Size() - offset
	}
	return &sectionReader{SectionReader: io.NewSectionReader(f, offset, length), f: f, ctx: ctx}, nil
}

type sectionReader struct {
	*io.SectionReader
	f   *os.File
	ctx context.Context
}

func (r *sectionReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.SectionReader.Read(p)
}

func (r *sectionReader) Close() error { return r.f.Close() }

// List implements backend.Store.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	// Walk only the directory the prefix names, then filter by the rest.
	dir := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dir = filepath.Join(s.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return fs.SkipAll
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) || isTemp(key) {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walking
		}
		if err != nil {
			return err
		}
		return fn(backend.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("list %s/%s: %w", s.Location(), prefix, err)
	}
	return nil
}

// tempSuffix marks files being written by Create and Put; they are never
// listed, and a leftover one (after a crash) is harmless.
const tempSuffix = ".sstatefs-tmp"

func isTemp(key string) bool { return strings.Contains(key, tempSuffix) }

// writeTemp copies r to a new temp file beside p and returns its name.
func writeTemp(ctx context.Context, p string, r io.Reader, size int64) (string, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*"+tempSuffix)
	if err != nil {
		return "", err
	}
	n, err := io.Copy(f, ctxReader{ctx, r})
	if err == nil && size >= 0 && n != size {
		err = fmt.Errorf("got %d bytes, want %d", n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Create implements backend.Store: the data goes to a temp file which is
// then hard-linked to the final name, an exclusive create that fails if the
// name exists, so readers see the object whole or not at all.
func (s *Store) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(p); err == nil {
		return mapErr(key, fs.ErrExist)
	}
	tmp, err := writeTemp(ctx, p, r, size)
	if err != nil {
		return mapErr(key, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, p); err != nil {
		return mapErr(key, err)
	}
	return nil
}

// Put implements backend.Store: temp file, then rename over the final name.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	tmp, err := writeTemp(ctx, p, r, size)
	if err != nil {
		return mapErr(key, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return mapErr(key, err)
	}
	return nil
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return mapErr(key, err)
	}
	return nil
}
