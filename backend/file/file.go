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

	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/internal/beneath"
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

// open checks key and opens the store's root, below which every access is
// resolved without following a symbolic link (internal/beneath): a link
// planted in the store directory, to /etc/shadow or a directory outside,
// is not an object, and no write goes through one. The root directory
// itself may be a link (it is the operator's choice).
func (s *Store) open(key string) (*os.File, error) {
	if err := backend.CheckKey(key); err != nil {
		return nil, err
	}
	root, err := beneath.OpenRoot(s.root)
	if err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	return root, nil
}

// split returns a key's directory ("" at the top) and base name.
func split(key string) (dir, base string) {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[:i], key[i+1:]
	}
	return "", key
}

// mapErr maps errors of reads: what is not a regular file reached without
// a link (a link, a directory, a FIFO, a path through a linked directory)
// is not an object.
func mapErr(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular) || errors.Is(err, beneath.ErrNotRegular) || errors.Is(err, beneath.ErrSymlink) || errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%s: %v: %w", key, err, backend.ErrNotExist)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", key, backend.ErrExist)
	}
	return fmt.Errorf("%s: %w", key, err)
}

// mapWriteErr maps errors of writes: a link on the way is refused, not
// reported as absent.
func mapWriteErr(key string, err error) error {
	if errors.Is(err, beneath.ErrSymlink) {
		return fmt.Errorf("%s: refused: %w", key, err)
	}
	return mapErr(key, err)
}

var errNotRegular = errors.New("not a regular file")

// Stat implements backend.Store. A symbolic link is not an object (lstat
// semantics).
func (s *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return backend.ObjectInfo{}, err
	}
	root, err := s.open(key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	defer root.Close()
	fi, err := beneath.Lstat(root, key)
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%v: %w", fi.Mode().Type(), errNotRegular)
	}
	if err != nil {
		return backend.ObjectInfo{}, mapErr(key, err)
	}
	return backend.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Open implements backend.Store.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	root, err := s.open(key)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := beneath.Open(root, key)
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

// List implements backend.Store. It lists regular files only and never
// descends into a linked directory.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	return s.list(ctx, prefix, "", fn)
}

var _ backend.AfterLister = (*Store)(nil)

// ListAfter implements backend.AfterLister: it walks the same directories
// as List (reading a local directory is cheap) and skips the keys up to start.
func (s *Store) ListAfter(ctx context.Context, prefix, start string, fn func(backend.ObjectInfo) error) error {
	return s.list(ctx, prefix, start, fn)
}

func (s *Store) list(ctx context.Context, prefix, start string, fn func(backend.ObjectInfo) error) error {
	root, err := beneath.OpenRoot(s.root)
	if err != nil {
		return fmt.Errorf("list %s/%s: %w", s.Location(), prefix, err)
	}
	defer root.Close()
	// Walk only the directory the prefix names, then filter by the rest.
	dir, _ := split(prefix)
	d, err := beneath.Dir(root, dir, false, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, beneath.ErrSymlink) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s/%s: %w", s.Location(), prefix, err)
	}
	defer d.Close()
	if dir != "" {
		dir += "/"
	}
	err = beneath.Walk(d, func(rel string, fi fs.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := dir + rel
		if !fi.Mode().IsRegular() || !strings.HasPrefix(key, prefix) || key <= start || isTemp(key) {
			return nil
		}
		if backend.CheckKey(key) != nil {
			return nil // a name with a control character: no key can reach it
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

// parentOf opens (creating it if needed) the directory of key below root.
func parentOf(root *os.File, key string) (*os.File, string, error) {
	dir, base := split(key)
	d, err := beneath.Dir(root, dir, true, 0o755)
	return d, base, err
}

// writeTemp copies r to a new temp file in dir beside base and returns its
// name.
func writeTemp(ctx context.Context, dir *os.File, base string, r io.Reader, size int64) (string, error) {
	f, name, err := beneath.CreateTemp(dir, "."+base+".", tempSuffix)
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
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(int(dir.Fd()), name, 0)
		return "", err
	}
	return name, nil
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

// parentDir opens the directory key is to be written in (made if missing,
// never through a link) and returns it with the name key has in it.
func (s *Store) parentDir(key string) (*os.File, string, error) {
	root, err := s.open(key)
	if err != nil {
		return nil, "", err
	}
	defer root.Close()
	d, base, err := parentOf(root, key)
	if err != nil {
		return nil, "", mapWriteErr(key, err)
	}
	return d, base, nil
}

// Create implements backend.Store: the data goes to a temp file which is
// then hard-linked to the final name, an exclusive create that fails if the
// name exists (a link included, which is never followed), so readers see
// the object whole or not at all.
func (s *Store) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	d, base, err := s.parentDir(key)
	if err != nil {
		return err
	}
	defer d.Close()
	var st unix.Stat_t
	if unix.Fstatat(int(d.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		return mapErr(key, fs.ErrExist)
	}
	tmp, err := writeTemp(ctx, d, base, r, size)
	if err != nil {
		return mapErr(key, err)
	}
	defer unix.Unlinkat(int(d.Fd()), tmp, 0)
	if err := unix.Linkat(int(d.Fd()), tmp, int(d.Fd()), base, 0); err != nil {
		return mapErr(key, &fs.PathError{Op: "link", Path: key, Err: err})
	}
	return nil
}

// Put implements backend.Store: temp file, then rename over the final name
// (which replaces a link there rather than writing through it).
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	d, base, err := s.parentDir(key)
	if err != nil {
		return err
	}
	defer d.Close()
	tmp, err := writeTemp(ctx, d, base, r, size)
	if err != nil {
		return mapErr(key, err)
	}
	if err := unix.Renameat(int(d.Fd()), tmp, int(d.Fd()), base); err != nil {
		unix.Unlinkat(int(d.Fd()), tmp, 0)
		return mapErr(key, &fs.PathError{Op: "rename", Path: key, Err: err})
	}
	return nil
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	root, err := s.open(key)
	if err != nil {
		return err
	}
	defer root.Close()
	dir, base := split(key)
	d, err := beneath.Dir(root, dir, false, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return mapWriteErr(key, err)
	}
	defer d.Close()
	if err := unix.Unlinkat(int(d.Fd()), base, 0); err != nil && err != unix.ENOENT {
		return mapErr(key, &fs.PathError{Op: "remove", Path: key, Err: err})
	}
	return nil
}
