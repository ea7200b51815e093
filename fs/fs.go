// Package fs is the kernel-facing layer of sstatefs: go-fuse nodes that turn
// syscalls into calls on the view of the store (package view) and on a local
// overlay directory, and map errors to errno in one place (errno.go). It
// holds no storage logic.
//
// The tree is the union of two layers:
//   - the store's objects (read-only, from the view): stat answered from the
//     index, bytes fetched on open into the verified disk cache;
//   - the overlay, a local directory holding everything created through the
//     mount: bitbake's temp files and the objects it publishes by link or
//     rename, lock files, the sanity check's file, directories, symlinks.
//
// The overlay wins where both have a name. Removing a store object through
// the mount hides it locally (a whiteout); the store is never changed here.
//
// Who may do what: the kernel checks ordinary Unix permissions
// (default_permissions) against the attributes returned here (store objects
// and directories belong to the mount owner, 0664 and 0775); on top of
// that, publishing (a link or rename onto an sstate object name, or
// creating one) and hiding a store object are allowed only to
// Options.Publishers, whatever the overlay's modes say.
package fs

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/sstate"
	"github.com/sstatefs/sstatefs/view"
)

// Options configure the file system.
type Options struct {
	View    *view.View
	Overlay string // directory of the local overlay; created if missing
	// StateDir keeps small durable state (whiteouts); created if missing.
	StateDir string
	// UID and GID own the store's objects and directories, and the root.
	UID, GID uint32
	// Publishers may publish objects (link, rename or create onto an sstate
	// object name) and hide store objects; anyone else gets EACCES. The
	// zero Rule allows root (and group 0) only.
	Publishers access.Rule
	// CacheDir is reported by statfs (the disk the cache lives on).
	CacheDir string
	Logger   *slog.Logger
	// Publish is called when bitbake publishes an object: a link or rename
	// whose target is an sstate object name (temp files, lock files and the
	// like are never published). path is the overlay file. It must return
	// once the publication is durable; an error undoes the link or rename
	// and fails it with EIO, so bitbake never sees a publish succeed that
	// would be lost. May be nil.
	Publish func(ctx context.Context, key, path string) error
	// DaemonOpens answers every open in this process (a round trip per
	// open, and FUSE passthrough of cached objects) instead of letting the
	// kernel open files by itself and keep their pages across opens.
	DaemonOpens bool
	// NoPassthrough (with DaemonOpens) keeps reads of cached objects in
	// this process instead of letting the kernel read the cache file.
	NoPassthrough bool
	// ObjectTimeout is how long the kernel may keep a store object's name
	// and attributes, and a directory's name, without asking again:
	// objects never change, so only an object deleted from the store by
	// other means can be seen late. Zero: one hour.
	ObjectTimeout time.Duration
	// Prefetch says when a store object is fetched ahead of its open:
	// PrefetchOnTouch (bitbake touches every object it is going to use
	// right after checking it), PrefetchOnLookup, or PrefetchOff.
	Prefetch PrefetchMode
}

// PrefetchMode says what triggers a background fetch of a package.
type PrefetchMode string

const (
	PrefetchOnTouch  PrefetchMode = "touch"
	PrefetchOnLookup PrefetchMode = "lookup"
	PrefetchOff      PrefetchMode = "off"
)

// FS is the shared state of all nodes of one mount.
type FS struct {
	view     *view.View
	overlay  string
	uid, gid uint32
	cacheDir string
	log      *slog.Logger
	publish  func(ctx context.Context, key, path string) error
	start    time.Time

	daemonOpens   bool
	noPassthrough bool
	objectTimeout time.Duration
	prefetch      PrefetchMode
	chownWarn     sync.Once

	publishers access.Rule
	refused    sync.Map // uid → struct{}: callers already logged as refused

	whiteouts *whiteouts
	names     *overlayNames
}

// New prepares the file system and returns its root node.
func New(opt Options) (*FS, gofs.InodeEmbedder, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{opt.Overlay, opt.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	wo, err := openWhiteouts(filepath.Join(opt.StateDir, "whiteouts"))
	if err != nil {
		return nil, nil, err
	}
	names, err := loadOverlayNames(opt.Overlay)
	if err != nil {
		return nil, nil, fmt.Errorf("reading overlay %s: %w", opt.Overlay, err)
	}
	f := &FS{
		view: opt.View, overlay: opt.Overlay, uid: opt.UID, gid: opt.GID,
		cacheDir: opt.CacheDir, log: opt.Logger, publish: opt.Publish,
		start: time.Now(), whiteouts: wo, names: names, prefetch: opt.Prefetch,
		daemonOpens: opt.DaemonOpens, noPassthrough: opt.NoPassthrough, objectTimeout: opt.ObjectTimeout,
		publishers: opt.Publishers,
	}
	if f.objectTimeout <= 0 {
		f.objectTimeout = time.Hour
	}
	if f.cacheDir == "" {
		f.cacheDir = opt.Overlay
	}
	// The overlay's root is the mount's root: like the store's directories
	// it belongs to the mount owner, group-writable, so that the kernel
	// lets the owner and its group create files there and nobody else.
	if os.Getuid() == 0 {
		if err := os.Lchown(opt.Overlay, int(opt.UID), int(opt.GID)); err != nil {
			return nil, nil, fmt.Errorf("giving overlay %s to the mount owner: %w", opt.Overlay, err)
		}
	}
	if err := os.Chmod(opt.Overlay, 0o775); err != nil {
		return nil, nil, fmt.Errorf("overlay %s: %w", opt.Overlay, err)
	}
	return f, &dirNode{fs: f}, nil
}

// Close releases the FS's files.
func (f *FS) Close() error { return f.whiteouts.close() }

// publishes reports whether a link or rename onto key publishes an object.
func (f *FS) publishes(key string) bool {
	return f.publish != nil && isObjectName(key)
}

// isObjectName reports whether key is an sstate object's name: what every
// builder sharing the store trusts once it is there.
func isObjectName(key string) bool {
	_, err := sstate.Parse(key)
	return err == nil
}

// allowPublish answers EACCES unless the caller may publish or hide store
// objects (Options.Publishers). The kernel's permission checks come first;
// this one holds even in an overlay directory someone made 0777. A refused
// user is logged once.
func (f *FS) allowPublish(ctx context.Context, op, key string) syscall.Errno {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return syscall.EACCES
	}
	if f.publishers.Allows(access.Caller{UID: c.Uid, GID: c.Gid, PID: c.Pid}) {
		return 0
	}
	if _, seen := f.refused.LoadOrStore(c.Uid, struct{}{}); !seen {
		f.log.Warn("refused: only the mount's publishers may publish or hide store objects (logged once per user)",
			"op", op, "object", key, "uid", c.Uid, "gid", c.Gid, "publishers", f.publishers.String())
	}
	return syscall.EACCES
}

// overlayPath is the overlay file of a mount-relative path.
func (f *FS) overlayPath(rel string) string {
	return filepath.Join(f.overlay, filepath.FromSlash(rel))
}

// Inode numbers: overlay files keep the number of their overlay file, so
// hard links share one and fstat agrees with stat (bitbake's lock loop
// compares them); store objects and directories get a stable hash of their
// path, in ranges an overlay file system does not use.
const (
	objectInoBit = 1 << 63
	dirInoBit    = 1 << 62
)

func pathHash(rel string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(rel))
	return h.Sum64() &^ (objectInoBit | dirInoBit)
}

func objectIno(rel string) uint64 { return pathHash(rel) | objectInoBit }
func dirIno(rel string) uint64 {
	if rel == "" {
		return 1
	}
	return pathHash(rel) | dirInoBit
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// rel returns the node's path relative to the mount root ("" for the root).
func rel(n *gofs.Inode) string { return n.Path(n.Root()) }

// chownToCaller gives a new overlay file to the process that created it
// (a mount made by root serving a build user through allow_other).
func (f *FS) chownToCaller(ctx context.Context, p string) {
	if os.Getuid() != 0 {
		return
	}
	if c, ok := fuse.FromContext(ctx); ok {
		f.chown(p, int(c.Uid), int(c.Gid))
	}
}

// chown changes an overlay path's owner; a failure (no CAP_CHOWN) leaves
// the file to root, which the build user may then not be able to change:
// say so, once.
func (f *FS) chown(p string, uid, gid int) {
	if err := syscall.Lchown(p, uid, gid); err != nil {
		f.chownWarn.Do(func() {
			f.log.Warn("cannot give files created through the mount to their creator (needs CAP_CHOWN); they stay owned by the mount's user", "path", p, "error", err)
		})
	}
}

// MountConfig is how the kernel side of a mount is set up.
type MountConfig struct {
	AllowOther, Debug bool
	// Source is what mount tables show as the mount's source (sstatefs
	// gives its cache directory: `sstatefs status MOUNTPOINT` finds the
	// mount by it).
	Source string
	// EntryTimeout is how long the kernel may cache names and attributes
	// (store objects are immutable; changes made through the mount are
	// seen at once); NegativeTimeout how long it may cache an absent name
	// (another builder's new object shows after at most this). Zero: 1s.
	EntryTimeout, NegativeTimeout time.Duration
}

// MountOptions returns go-fuse options for mounting root.
func MountOptions(mc MountConfig) *gofs.Options {
	if mc.Source == "" {
		mc.Source = "sstatefs"
	}
	if mc.EntryTimeout <= 0 {
		mc.EntryTimeout = time.Second
	}
	if mc.NegativeTimeout <= 0 {
		mc.NegativeTimeout = time.Second
	}
	return &gofs.Options{
		EntryTimeout:    &mc.EntryTimeout,
		AttrTimeout:     &mc.EntryTimeout,
		NegativeTimeout: &mc.NegativeTimeout,
		MountOptions: fuse.MountOptions{
			AllowOther:    mc.AllowOther,
			FsName:        mc.Source,
			Name:          "sstatefs",
			Debug:         mc.Debug,
			DirectMount:   true, // root mounts without fusermount3; others fall back to it
			MaxBackground: 64,
			// Reads and writes of up to 1 MiB less two pages: a read's
			// answer and its header then fit the pipe go-fuse splices it
			// through (1 MiB by default).
			MaxWrite:     1<<20 - 8<<10,
			MaxReadAhead: 1 << 20,
			// The kernel checks ordinary Unix permissions against the
			// attributes this FS returns: without it, an allow_other mount
			// lets any local user read, change and remove everyone's files.
			// Store objects are the mount owner's and group-writable, so
			// the build user (owner or group) still touches them.
			Options: []string{"default_permissions"},
		},
	}
}

// whiteouts are the store objects hidden by an unlink through the mount,
// kept in a file so they stay hidden after a restart.
type whiteouts struct {
	mu   sync.Mutex // protects set and f
	set  map[string]bool
	path string
}

func openWhiteouts(p string) (*whiteouts, error) {
	w := &whiteouts{set: map[string]bool{}, path: p}
	data, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, line := range splitLines(string(data)) {
		w.set[line] = true
	}
	return w, nil
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

func (w *whiteouts) has(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.set[key]
}

func (w *whiteouts) add(key string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.set[key] {
		return nil
	}
	w.set[key] = true
	return w.saveLocked()
}

func (w *whiteouts) remove(key string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.set[key] {
		return nil
	}
	delete(w.set, key)
	return w.saveLocked()
}

// saveLocked rewrites the file atomically; whiteouts are rare (cleanup
// tools), so a rewrite per change is cheap enough.
func (w *whiteouts) saveLocked() error {
	var b []byte
	for k := range w.set {
		b = append(b, k...)
		b = append(b, '\n')
	}
	tmp := w.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, w.path)
}

func (w *whiteouts) close() error { return nil }

// ReadAheadKB is the kernel read-ahead a mount gets (SetReadAhead): the
// kernel's default (128 KiB) splits a streamed object into many small READ
// requests, each a round trip through this process; with 512 KiB a READ
// still fits the pipe its answer is spliced through (1 MiB by default),
// and the first bytes of a download reach the reader sooner than with
// larger requests (measured with the benchmark: see BENCHMARKS.md).
const ReadAheadKB = 512

// SetReadAhead sets the kernel's read-ahead of the mount at mountpoint (its
// backing device info in /sys/class/bdi; root only).
func SetReadAhead(mountpoint string, kb int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(mountpoint, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}
