// Package overlay is the local layer of a mount: the names created through
// it (bitbake's temp files, lock files, directories, symlinks and the
// objects it publishes by link or rename), the whiteouts that hide store
// objects removed through it, and the rules of links, renames and
// publication, including who may publish. It knows nothing of the kernel:
// operations take keys (slash-separated paths relative to the mount's
// root), the caller and modes, and return sentinel errors (ErrExist,
// ErrNotExist, ErrNotEmpty, ErrPermission, ErrCrossDevice, ErrInvalid) or
// the local file system's own errors; package fs maps them to errno.
//
// The mount shows the union of two layers: the store's objects (read-only,
// from package view) and the overlay directory. The overlay wins where both
// have a name. Removing a store object hides it locally (a whiteout); the
// store is never changed here.
package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/sstate"
	"github.com/sstatefs/sstatefs/view"
)

// Sentinel errors of the overlay's rules, wrapped with the key they concern
// (except ErrNotExist from Lookup: the hot path of absent names).
var (
	ErrNotExist = errors.New("no such file or directory")
	ErrExist    = errors.New("file exists")
	ErrNotEmpty = errors.New("directory not empty")
	// ErrPermission: the caller may not publish or hide store objects, or
	// the name is the store's metadata.
	ErrPermission = errors.New("permission denied")
	// ErrCrossDevice: a store object or directory cannot move (mv then
	// copies and unlinks), and a link needs an overlay file as its source.
	ErrCrossDevice = errors.New("cannot move or link a store object or directory")
	ErrInvalid     = errors.New("invalid argument")
)

// UnknownCaller is a caller the kernel did not name: (uid_t)-1, no user's
// id, so no rule allows it; what it creates keeps this process's owner.
var UnknownCaller = access.Caller{UID: ^uint32(0), GID: ^uint32(0)}

// Store is the read side the overlay lies over (a *view.View).
type Store interface {
	Stat(ctx context.Context, key string) (view.Object, error)
	IsDir(dir string) bool
	ReadDir(dir string) []index.Entry
	// Forget drops what is known of key's absence (it was just created).
	Forget(key string)
}

var _ Store = (*view.View)(nil)

// Options configure an Overlay.
type Options struct {
	Store Store
	Dir   string // the overlay directory; created if missing
	// StateDir keeps small durable state (whiteouts); created if missing.
	StateDir string
	// UID and GID own the directories the overlay creates for the store's
	// (and the overlay's root), like the store's directories they stand for.
	UID, GID uint32
	// Publishers may publish objects (link, rename or create onto an sstate
	// object name) and hide store objects; anyone else gets ErrPermission.
	// The zero Rule allows root (and group 0) only.
	Publishers access.Rule
	// Publish is called when an object is published: a link or rename of
	// a regular file whose target is an sstate object name (temp files,
	// lock files and the like are never published). path is the overlay
	// file. It must return once the publication is durable; an error undoes
	// the link or rename and is returned, so that the caller never sees a
	// publish succeed that would be lost. May be nil.
	Publish func(ctx context.Context, key, path string) error
	Logger  *slog.Logger
}

// Overlay is the local layer of one mount. Safe for concurrent use.
type Overlay struct {
	store      Store
	dir        string
	uid, gid   uint32
	publishers access.Rule
	publish    func(ctx context.Context, key, path string) error
	log        *slog.Logger

	names     *nameSet
	whiteouts *whiteouts

	refused   sync.Map // uid → struct{}: callers already logged as refused
	chownWarn sync.Once
}

// Open prepares the overlay directory and reads its state.
func Open(opt Options) (*Overlay, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{opt.Dir, opt.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	wo, err := openWhiteouts(filepath.Join(opt.StateDir, "whiteouts"))
	if err != nil {
		return nil, err
	}
	names, err := loadNames(opt.Dir)
	if err != nil {
		return nil, fmt.Errorf("reading overlay %s: %w", opt.Dir, err)
	}
	// The overlay's root is the mount's root: like the store's directories
	// it belongs to the mount owner, group-writable, so that the kernel
	// lets the owner and its group create files there and nobody else.
	if os.Getuid() == 0 {
		if err := os.Lchown(opt.Dir, int(opt.UID), int(opt.GID)); err != nil {
			return nil, fmt.Errorf("giving overlay %s to the mount owner: %w", opt.Dir, err)
		}
	}
	if err := os.Chmod(opt.Dir, 0o775); err != nil {
		return nil, fmt.Errorf("overlay %s: %w", opt.Dir, err)
	}
	return &Overlay{
		store: opt.Store, dir: opt.Dir, uid: opt.UID, gid: opt.GID,
		publishers: opt.Publishers, publish: opt.Publish, log: opt.Logger,
		names: names, whiteouts: wo,
	}, nil
}

// Close releases the overlay's files (none are held open today).
func (o *Overlay) Close() error { return nil }

// Path is the overlay file of key.
func (o *Overlay) Path(key string) string {
	return filepath.Join(o.dir, filepath.FromSlash(key))
}

// Kind is what a name is.
type Kind int

const (
	Local  Kind = iota // a file or symlink of the overlay (Entry.Stat)
	Object             // a store object (Entry.Object)
	Dir                // a directory of the overlay, the store, or both
)

// Entry is what Lookup found.
type Entry struct {
	Kind   Kind
	Stat   syscall.Stat_t // Local: the overlay file's
	Object view.Object    // Object
}

// Lookup finds what is at key: an overlay entry, else (unless hidden by a
// whiteout) a store object or directory. A store that cannot be asked makes
// the name absent, logged: bitbake treats that as a missing object, which
// does not break its build.
func (o *Overlay) Lookup(ctx context.Context, key string) (Entry, error) {
	if view.Hidden(key) {
		return Entry{}, ErrNotExist
	}
	if o.names.has(key) { // else no syscall on the hot path of store lookups
		var st syscall.Stat_t
		err := syscall.Lstat(o.Path(key), &st)
		switch {
		case err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR:
			return Entry{Kind: Dir}, nil
		case err == nil:
			return Entry{Kind: Local, Stat: st}, nil
		case !errors.Is(err, syscall.ENOENT):
			return Entry{}, fmt.Errorf("%s: %w", key, err)
		}
	}
	if o.whiteouts.has(key) {
		return Entry{}, ErrNotExist
	}
	obj, err := o.store.Stat(ctx, key)
	if err == nil {
		return Entry{Kind: Object, Object: obj}, nil
	}
	if !errors.Is(err, backend.ErrNotExist) {
		o.log.Warn("lookup: store unreachable, answering ENOENT", "object", key, "error", err)
		return Entry{}, ErrNotExist
	}
	// an sstate object name is never a directory: skip the directory check
	// on the hot path of absent objects
	if !looksLikeObject(key) && o.store.IsDir(key) {
		return Entry{Kind: Dir}, nil
	}
	return Entry{}, ErrNotExist
}

// exists reports whether anything is at key (overlay or store).
func (o *Overlay) exists(ctx context.Context, key string) bool {
	_, err := o.Lookup(ctx, key)
	return err == nil
}

// DirStat returns the overlay directory's attributes for key, if the
// overlay has that directory (else the directory is the store's alone).
func (o *Overlay) DirStat(key string) (syscall.Stat_t, bool) {
	var st syscall.Stat_t
	if (key == "" || o.names.has(key)) && syscall.Stat(o.Path(key), &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		return st, true
	}
	return st, false
}

// DirEntry is a name listed by ReadDir.
type DirEntry struct {
	Name  string
	Mode  uint32 // file type bits (syscall.S_IFMT)
	Ino   uint64 // the overlay file's inode number; 0 for the store's
	Local bool   // in the overlay
}

// ReadDir lists dir: the overlay's names, then the store's names the
// overlay neither has nor hides. The store's metadata never shows.
func (o *Overlay) ReadDir(dir string) []DirEntry {
	seen := map[string]bool{}
	var out []DirEntry
	if des, err := os.ReadDir(o.Path(dir)); err == nil {
		for _, de := range des {
			if view.Hidden(view.Join(dir, de.Name())) {
				continue
			}
			fi, err := de.Info()
			if err != nil {
				continue // removed since it was listed
			}
			st := fi.Sys().(*syscall.Stat_t)
			seen[de.Name()] = true
			out = append(out, DirEntry{Name: de.Name(), Mode: st.Mode & syscall.S_IFMT, Ino: st.Ino, Local: true})
		}
	}
	for _, e := range o.store.ReadDir(dir) {
		if seen[e.Name] || o.whiteouts.has(view.Join(dir, e.Name)) {
			continue
		}
		mode := uint32(syscall.S_IFREG)
		if e.IsDir {
			mode = syscall.S_IFDIR
		}
		out = append(out, DirEntry{Name: e.Name, Mode: mode})
	}
	return out
}

// MakeDirs makes the overlay directory dir and its parents exist, so that
// a file can be created (or attributes set) in a directory that so far
// exists only in the store. The levels it creates belong to the mount
// owner, like the store's directories they stand for.
func (o *Overlay) MakeDirs(dir string) error {
	if dir == "." || dir == "" {
		return nil
	}
	var k string
	for _, el := range strings.Split(filepath.ToSlash(dir), "/") {
		k = view.Join(k, el)
		if o.names.has(k) {
			continue // made through the mount already: no syscall
		}
		p := o.Path(k)
		switch err := syscall.Mkdir(p, 0o775); {
		case err == nil:
			o.names.add(k)
			if os.Getuid() == 0 {
				o.chown(p, int(o.uid), int(o.gid))
			}
			// 0775 whatever this process's umask: the group publishes
			if err := syscall.Chmod(p, 0o775); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
		case errors.Is(err, syscall.EEXIST):
			o.names.add(k)
		default:
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	return nil
}

// makeParent makes the overlay directory of key's parent exist.
func (o *Overlay) makeParent(key string) error { return o.MakeDirs(parent(key)) }

// IsObjectName reports whether key is an sstate object's name: what every
// builder sharing the store trusts once it is there.
func IsObjectName(key string) bool {
	_, err := sstate.Parse(key)
	return err == nil
}

// publishes reports whether a link or rename onto key publishes an object.
func (o *Overlay) publishes(key string) bool {
	return o.publish != nil && IsObjectName(key)
}

// allowPublish answers ErrPermission unless c may publish or hide store
// objects (Options.Publishers). This holds whatever the overlay's modes
// say (a directory someone made 0777). A refused user is logged once.
func (o *Overlay) allowPublish(c access.Caller, op, key string) error {
	if o.publishers.Allows(c) {
		return nil
	}
	if _, seen := o.refused.LoadOrStore(c.UID, struct{}{}); !seen {
		o.log.Warn("refused: only the mount's publishers may publish or hide store objects (logged once per user)",
			"op", op, "object", key, "uid", c.UID, "gid", c.GID, "publishers", o.publishers.String())
	}
	return fmt.Errorf("%s %s by uid %d: %w", op, key, c.UID, ErrPermission)
}

// chownToCaller gives a new overlay file to the process that created it
// (a mount made by root serving a build user through allow_other).
func (o *Overlay) chownToCaller(c access.Caller, p string) {
	if os.Getuid() != 0 || c == UnknownCaller {
		return
	}
	o.chown(p, int(c.UID), int(c.GID))
}

// chown changes an overlay path's owner; a failure (no CAP_CHOWN) leaves
// the file to root, which the build user may then not be able to change:
// say so, once.
func (o *Overlay) chown(p string, uid, gid int) {
	if err := syscall.Lchown(p, uid, gid); err != nil {
		o.chownWarn.Do(func() {
			o.log.Warn("cannot give files created through the mount to their creator (needs CAP_CHOWN); they stay owned by the mount's user", "path", p, "error", err)
		})
	}
}

// hide adds a whiteout for key, which must stay hidden for the operation
// to have happened: its error is the operation's.
func (o *Overlay) hide(op, key string) error {
	if err := o.whiteouts.add(key); err != nil {
		return fmt.Errorf("%s %s: %w", op, key, err)
	}
	return nil
}

// unhide drops key's whiteout after key was created in the overlay, which
// shows it whatever the whiteout says: a failure to record that only
// matters after a restart, when the overlay's file still wins. Logged.
func (o *Overlay) unhide(ctx context.Context, op, key string) {
	if err := o.whiteouts.remove(key); err != nil {
		o.log.LogAttrs(ctx, slog.LevelError, "could not drop a whiteout", slog.String("op", op), slog.String("object", key), slog.String("error", err.Error()))
	}
}

func parent(key string) string {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[:i]
	}
	return ""
}

// looksLikeObject is a cheap test for names that can only be objects.
func looksLikeObject(key string) bool {
	i := strings.LastIndexByte(key, '/')
	return strings.HasPrefix(key[i+1:], "sstate:")
}
