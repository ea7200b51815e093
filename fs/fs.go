// Package fs is the kernel adapter of sstatefs: go-fuse nodes that turn
// each syscall into a call on the layers below, which know nothing of the
// kernel, and map their errors to errno in one place (errno.go). It holds
// no storage or overlay rules of its own:
//   - package view answers for the store's objects (read-only): stat from
//     the index, bytes fetched on open into the verified disk cache;
//   - package overlay owns the local layer (everything created through the
//     mount), the whiteouts that hide store objects, and the rules of
//     links, renames, publication and who may publish.
//
// What is left here is the kernel's side: inode numbers, attributes and
// their timeouts, open files and how reads are answered (splice, FUSE
// passthrough, the kernel's page cache), statfs, xattrs.
//
// Who may do what: the kernel checks ordinary Unix permissions
// (default_permissions) against the attributes returned here (store objects
// and directories belong to the mount owner, 0664 and 0775); on top of
// that, the overlay allows publishing and hiding store objects only to
// Options.Publishers.
//
// The package's name is the directory's, fixed in the project's layout; it
// shadows the standard library's io/fs, which is imported as iofs where
// needed.
package fs

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"strconv"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/overlay"
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
	// and fails it (EIO unless it is a local errno), so bitbake never sees
	// a publish succeed that would be lost (overlay.Options.Publish). May
	// be nil.
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

// FS is the shared state of all nodes of one mount. Its fields are set by
// New and never change: no lock (view and overlay lock for themselves).
type FS struct {
	view     *view.View
	overlay  *overlay.Overlay
	uid, gid uint32
	cacheDir string
	log      *slog.Logger
	start    time.Time

	daemonOpens   bool
	noPassthrough bool
	objectTimeout time.Duration
	prefetch      PrefetchMode
}

// New prepares the file system and returns its root node.
func New(opt Options) (*FS, gofs.InodeEmbedder, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	ov, err := overlay.Open(overlay.Options{
		Store: opt.View, Dir: opt.Overlay, StateDir: opt.StateDir, UID: opt.UID, GID: opt.GID,
		Publishers: opt.Publishers, Publish: opt.Publish, Logger: opt.Logger,
	})
	if err != nil {
		return nil, nil, err
	}
	f := &FS{
		view: opt.View, overlay: ov, uid: opt.UID, gid: opt.GID,
		cacheDir: opt.CacheDir, log: opt.Logger,
		start: time.Now(), prefetch: opt.Prefetch,
		daemonOpens: opt.DaemonOpens, noPassthrough: opt.NoPassthrough, objectTimeout: opt.ObjectTimeout,
	}
	if f.objectTimeout <= 0 {
		f.objectTimeout = time.Hour
	}
	if f.cacheDir == "" {
		f.cacheDir = opt.Overlay
	}
	return f, &dirNode{fs: f}, nil
}

// Close releases the FS's files.
func (f *FS) Close() error { return f.overlay.Close() }

// caller is the process making the request, as the overlay's rules see it.
func caller(ctx context.Context) access.Caller {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return overlay.UnknownCaller
	}
	return access.Caller{UID: c.Uid, GID: c.Gid, PID: c.Pid}
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

// rel returns the node's path relative to the mount root ("" for the root).
func rel(n *gofs.Inode) string { return n.Path(n.Root()) }

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
