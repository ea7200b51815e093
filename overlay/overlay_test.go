package overlay_test

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
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/overlay"
	"github.com/sstatefs/sstatefs/view"
)

const (
	h1 = "c369644453e7186778f2fc3e6bd1f8573c07d05e836615ed00790293797515bf"
	h2 = "7934f5033b9e8e2ab30a0af81640942d3e239c9ba8d0350b520fef20a5478762"
	// storeKey is in the store; newKey and otherKey are object names that
	// are not.
	storeKey = "c3/69/sstate:p:x86_64-linux:1.0:r0:x86_64:14:" + h1 + "_populate_sysroot.tar.zst"
	newKey   = "79/34/sstate:p:x86_64-linux:1.0:r0:x86_64:14:" + h2 + "_populate_sysroot.tar.zst"
	otherKey = "79/34/sstate:p:x86_64-linux:1.0:r0:x86_64:14:" + h2 + "_package.tar.zst"
)

var (
	root     = access.Caller{UID: 0, GID: 0}
	owner    = access.Caller{UID: 1000, GID: 1000}
	stranger = access.Caller{UID: 65534, GID: 65534} // PID 0: groups not consulted
)

// publisher records the publications it is asked for and fails them while
// fail is set.
type publisher struct {
	mu   sync.Mutex
	keys []string
	fail error
}

func (p *publisher) publish(ctx context.Context, key, path string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("publish of %s given a path that is not there: %w", key, err)
	}
	if p.fail != nil {
		return p.fail
	}
	p.keys = append(p.keys, key)
	return nil
}

func (p *publisher) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.keys...)
}

type env struct {
	o        *overlay.Overlay
	opt      overlay.Options
	storeDir string
	pub      *publisher
	log      *testutil.SyncBuffer
}

// newEnv builds the real read side (a file store holding storeKey, its
// index, the disk cache, the view) and an overlay over it, with no kernel.
func newEnv(t testing.TB) *env {
	t.Helper()
	ctx := context.Background()
	storeDir := t.TempDir()
	p := filepath.Join(storeDir, filepath.FromSlash(storeKey))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("store object"), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := file.New(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := index.Build(ctx, store, index.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := index.Save(ctx, store, ix); err != nil {
		t.Fatal(err)
	}
	live := index.NewLive(store, index.LiveOptions{Interval: time.Hour})
	if err := live.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := cache.Open(cache.Options{Dir: filepath.Join(t.TempDir(), "cache")})
	if err != nil {
		t.Fatal(err)
	}
	v := view.New(view.Options{Store: store, Index: live, Cache: c})
	e := &env{storeDir: storeDir, pub: &publisher{}, log: &testutil.SyncBuffer{}}
	state := t.TempDir()
	e.opt = overlay.Options{
		Store: v, Dir: filepath.Join(state, "overlay"), StateDir: filepath.Join(state, "state"),
		UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		Publishers: access.Rule{UID: owner.UID, GID: owner.GID},
		Publish:    e.pub.publish,
		Logger:     slog.New(slog.NewTextHandler(e.log, nil)),
	}
	e.reopen(t)
	return e
}

// reopen opens the overlay anew over the same directories (a restart).
func (e *env) reopen(t testing.TB) {
	t.Helper()
	o, err := overlay.Open(e.opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	e.o = o
}

// temp creates a temp file (bitbake's) holding data, as c.
func (e *env) temp(t *testing.T, c access.Caller, key, data string) {
	t.Helper()
	fd, _, err := e.o.Create(context.Background(), c, key, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := syscall.Write(fd, []byte(data)); err != nil {
		t.Fatal(err)
	}
}

func (e *env) kind(t *testing.T, key string) string {
	t.Helper()
	en, err := e.o.Lookup(context.Background(), key)
	switch {
	case errors.Is(err, overlay.ErrNotExist):
		return "absent"
	case err != nil:
		t.Fatalf("lookup %s: %v", key, err)
	}
	return [...]string{overlay.Local: "local", overlay.Object: "object", overlay.Dir: "dir"}[en.Kind]
}

func (e *env) content(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(e.o.Path(key))
	if err != nil {
		t.Fatalf("overlay file of %s: %v", key, err)
	}
	return string(b)
}

// The rules of the overlay, each from a fresh overlay over a store holding
// storeKey: what the operation answers, what it publishes, and what the
// names look like afterwards.
func TestRules(t *testing.T) {
	ctx := context.Background()
	errPublish := errors.New("store refused the object")
	for _, tc := range []struct {
		name      string
		run       func(t *testing.T, e *env) error
		wantErr   error    // nil: success
		published []string // publications made
		kinds     map[string]string
	}{{
		name: "link onto an object name publishes it",
		run: func(t *testing.T, e *env) error {
			e.temp(t, owner, "79/34/tmp.link", "new object")
			_, err := e.o.Link(ctx, owner, "79/34/tmp.link", newKey)
			return err
		},
		published: []string{newKey},
		kinds:     map[string]string{newKey: "local", "79/34/tmp.link": "local"},
	}, {
		name: "link onto another name publishes nothing",
		run: func(t *testing.T, e *env) error {
			e.temp(t, owner, "tmp.a", "x")
			_, err := e.o.Link(ctx, owner, "tmp.a", "lockfile")
			return err
		},
		kinds: map[string]string{"lockfile": "local"},
	}, {
		name: "link onto a store object's name",
		run: func(t *testing.T, e *env) error {
			e.temp(t, owner, "tmp.a", "x")
			_, err := e.o.Link(ctx, owner, "tmp.a", storeKey)
			return err
		},
		wantErr: overlay.ErrExist,
		kinds:   map[string]string{storeKey: "object"},
	}, {
		name: "link of a store object",
		run: func(t *testing.T, e *env) error {
			_, err := e.o.Link(ctx, owner, "", newKey)
			return err
		},
		wantErr: overlay.ErrCrossDevice,
		kinds:   map[string]string{newKey: "absent"},
	}, {
		name: "link undone when the publish fails",
		run: func(t *testing.T, e *env) error {
			e.temp(t, owner, "tmp.a", "x")
			e.pub.fail = errPublish
			_, err := e.o.Link(ctx, owner, "tmp.a", newKey)
			e.reopen(t) // nothing left in the overlay directory either
			return err
		},
		wantErr: errPublish,
		kinds:   map[string]string{newKey: "absent", "tmp.a": "local"},
	}, {
		name: "link onto an object name refused to a stranger",
		run: func(t *testing.T, e *env) error {
			e.temp(t, stranger, "tmp.a", "x")
			_, err := e.o.Link(ctx, stranger, "tmp.a", newKey)
			return err
		},
		wantErr: overlay.ErrPermission,
		kinds:   map[string]string{newKey: "absent"},
	}, {
		name: "link by an unknown caller refused",
		run: func(t *testing.T, e *env) error {
			e.temp(t, root, "tmp.a", "x")
			_, err := e.o.Link(ctx, overlay.UnknownCaller, "tmp.a", newKey)
			return err
		},
		wantErr: overlay.ErrPermission,
		kinds:   map[string]string{newKey: "absent"},
	}, {
		name: "rename onto an object name publishes it",
		run: func(t *testing.T, e *env) error {
			e.temp(t, owner, "79/34/tmp.siginfo", "sig")
			return e.o.Rename(ctx, owner, "79/34/tmp.siginfo", newKey, 0)
		},
		published: []string{newKey},
		kinds:     map[string]string{newKey: "local", "79/34/tmp.siginfo": "absent"},
	}, {
		name: "rename over an existing overlay file replaces it",
		run: func(t *testing.T, e *env) error {
			e.temp(t, root, "lock", "old")
			e.temp(t, root, "tmp.a", "new")
			if err := e.o.Rename(ctx, root, "tmp.a", "lock", 0); err != nil {
				return err
			}
			if got := e.content(t, "lock"); got != "new" {
				t.Errorf("after the rename, lock holds %q, want new", got)
			}
			return nil
		},
		kinds: map[string]string{"lock": "local", "tmp.a": "absent"},
	}, {
		name: "rename with RENAME_NOREPLACE over an existing file",
		run: func(t *testing.T, e *env) error {
			e.temp(t, root, "lock", "old")
			e.temp(t, root, "tmp.a", "new")
			return e.o.Rename(ctx, root, "tmp.a", "lock", overlay.RenameNoReplace)
		},
		wantErr: overlay.ErrExist,
		kinds:   map[string]string{"lock": "local", "tmp.a": "local"},
	}, {
		name: "rename with RENAME_EXCHANGE",
		run: func(t *testing.T, e *env) error {
			e.temp(t, root, "a", "a")
			e.temp(t, root, "b", "b")
			return e.o.Rename(ctx, root, "a", "b", 2)
		},
		wantErr: overlay.ErrInvalid,
	}, {
		name: "rename of a store object",
		run: func(t *testing.T, e *env) error {
			return e.o.Rename(ctx, owner, storeKey, newKey, 0)
		},
		wantErr: overlay.ErrCrossDevice,
		kinds:   map[string]string{storeKey: "object", newKey: "absent"},
	}, {
		name: "rename of a store object refused to a stranger",
		run: func(t *testing.T, e *env) error {
			return e.o.Rename(ctx, stranger, storeKey, "c3/69/x", 0)
		},
		wantErr: overlay.ErrPermission,
		kinds:   map[string]string{storeKey: "object"},
	}, {
		name: "rename undone when the publish fails",
		run: func(t *testing.T, e *env) error {
			e.temp(t, owner, "tmp.a", "x")
			e.pub.fail = errPublish
			err := e.o.Rename(ctx, owner, "tmp.a", newKey, 0)
			e.reopen(t) // nothing left in the overlay directory either
			return err
		},
		wantErr: errPublish,
		kinds:   map[string]string{newKey: "absent", "tmp.a": "local"},
	}, {
		name: "rename of an overlay file over a store object's name hides the old name's object",
		run: func(t *testing.T, e *env) error {
			e.temp(t, owner, "tmp.a", "x")
			if err := e.o.Rename(ctx, owner, "tmp.a", storeKey, 0); err != nil {
				return err
			}
			return e.o.Rename(ctx, owner, storeKey, otherKey, 0)
		},
		published: []string{storeKey, otherKey},
		kinds:     map[string]string{storeKey: "absent", otherKey: "local"},
	}, {
		name: "unlink of a store object hides it",
		run: func(t *testing.T, e *env) error {
			if err := e.o.Unlink(ctx, owner, storeKey); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(e.storeDir, filepath.FromSlash(storeKey))); err != nil {
				t.Errorf("the store's object went: %v", err)
			}
			if got := names(e.o.ReadDir("c3/69")); got != "" {
				t.Errorf("c3/69 lists %q, want nothing", got)
			}
			e.reopen(t) // stays hidden after a restart
			return nil
		},
		kinds: map[string]string{storeKey: "absent", "c3/69": "dir"},
	}, {
		name: "unlink of a store object refused to a stranger",
		run: func(t *testing.T, e *env) error {
			return e.o.Unlink(ctx, stranger, storeKey)
		},
		wantErr: overlay.ErrPermission,
		kinds:   map[string]string{storeKey: "object"},
	}, {
		name: "unlink of a hidden object",
		run: func(t *testing.T, e *env) error {
			if err := e.o.Unlink(ctx, owner, storeKey); err != nil {
				return err
			}
			return e.o.Unlink(ctx, owner, storeKey)
		},
		wantErr: overlay.ErrNotExist,
	}, {
		name: "create of a whited-out name shows the new file",
		run: func(t *testing.T, e *env) error {
			if err := e.o.Unlink(ctx, owner, storeKey); err != nil {
				return err
			}
			e.temp(t, owner, storeKey, "mine")
			if err := syscall.Unlink(e.o.Path(storeKey)); err != nil {
				return err
			}
			e.reopen(t) // the whiteout went with the create
			return nil
		},
		kinds: map[string]string{storeKey: "object"},
	}, {
		name: "rmdir of a store directory that shows objects",
		run: func(t *testing.T, e *env) error {
			return e.o.Rmdir(ctx, owner, "c3/69")
		},
		wantErr: overlay.ErrNotEmpty,
		kinds:   map[string]string{"c3/69": "dir"},
	}, {
		name: "rmdir of a store directory whose objects are hidden",
		run: func(t *testing.T, e *env) error {
			if err := e.o.Unlink(ctx, owner, storeKey); err != nil {
				return err
			}
			if err := e.o.Rmdir(ctx, owner, "c3/69"); err != nil {
				return err
			}
			e.reopen(t)
			return nil
		},
		kinds: map[string]string{"c3/69": "absent"},
	}, {
		name: "rmdir of a store directory refused to a stranger",
		run: func(t *testing.T, e *env) error {
			if err := e.o.Unlink(ctx, owner, storeKey); err != nil {
				return err
			}
			return e.o.Rmdir(ctx, stranger, "c3/69")
		},
		wantErr: overlay.ErrPermission,
		kinds:   map[string]string{"c3/69": "dir"},
	}, {
		name: "mkdir in a store directory",
		run: func(t *testing.T, e *env) error {
			return e.o.Mkdir(ctx, stranger, "c3/69/x", 0o755)
		},
		kinds: map[string]string{"c3/69/x": "dir", storeKey: "object"},
	}, {
		name: "mkdir of a store directory",
		run: func(t *testing.T, e *env) error {
			return e.o.Mkdir(ctx, owner, "c3/69", 0o755)
		},
		wantErr: overlay.ErrExist,
	}, {
		name: "create of an object name refused to a stranger",
		run: func(t *testing.T, e *env) error {
			_, _, err := e.o.Create(ctx, stranger, newKey, syscall.O_WRONLY|syscall.O_CREAT, 0o644)
			return err
		},
		wantErr: overlay.ErrPermission,
		kinds:   map[string]string{newKey: "absent"},
	}, {
		name: "create with O_EXCL of a store object's name",
		run: func(t *testing.T, e *env) error {
			_, _, err := e.o.Create(ctx, owner, storeKey, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o644)
			return err
		},
		wantErr: overlay.ErrExist,
	}, {
		name: "the store's metadata can neither be made nor seen",
		run: func(t *testing.T, e *env) error {
			if got := names(e.o.ReadDir("")); strings.Contains(got, ".sstatefs") {
				t.Errorf("the root lists %q", got)
			}
			return e.o.Mkdir(ctx, root, ".sstatefs", 0o755)
		},
		wantErr: overlay.ErrPermission,
		kinds:   map[string]string{".sstatefs": "absent", ".sstatefs/index": "absent"},
	}, {
		name: "symlink",
		run: func(t *testing.T, e *env) error {
			st, err := e.o.Symlink(ctx, owner, "elsewhere", "ln")
			if err == nil && st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
				t.Errorf("symlink's mode %o", st.Mode)
			}
			return err
		},
		kinds: map[string]string{"ln": "local"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			err := tc.run(t, e)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("got %v, want success", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if got, want := strings.Join(e.pub.published(), " "), strings.Join(tc.published, " "); got != want {
				t.Errorf("published %q, want %q", got, want)
			}
			for key, want := range tc.kinds {
				if got := e.kind(t, key); got != want {
					t.Errorf("%s is %s, want %s", key, got, want)
				}
			}
		})
	}
}

func names(es []overlay.DirEntry) string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name)
	}
	return strings.Join(out, " ")
}

// A whiteout that cannot be saved fails the unlink that needed it, and is
// logged where the operation has already happened (a create over a hidden
// name): never dropped in silence.
func TestWhiteoutSaveFailure(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if err := e.o.Unlink(ctx, owner, storeKey); err != nil {
		t.Fatal(err)
	}
	// a directory where the whiteouts' temp file goes: every save fails
	if err := os.Mkdir(filepath.Join(e.opt.StateDir, "whiteouts.tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.temp(t, owner, storeKey, "mine")
	if log := e.log.String(); !strings.Contains(log, "could not drop a whiteout") || !strings.Contains(log, storeKey) {
		t.Errorf("no error logged for the whiteout that could not be dropped; log:\n%s", log)
	}
	e.temp(t, owner, "c3/69/other", "x")
	if err := e.o.Unlink(ctx, owner, "c3/69/other"); err != nil {
		t.Errorf("unlink of an overlay file needs no whiteout: %v", err)
	}
	// hiding the store object again needs a whiteout saved: the unlink fails
	if err := e.o.Unlink(ctx, owner, storeKey); err == nil || !strings.Contains(err.Error(), "whiteouts") {
		t.Errorf("unlink of a store object whose whiteout cannot be saved: %v, want an error naming the whiteouts", err)
	}
}

// BenchmarkLookupAbsent is the hot path of bitbake's existence checks: an
// object name that is nowhere, answered from memory without allocating.
func BenchmarkLookupAbsent(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.o.Lookup(ctx, newKey); err != overlay.ErrNotExist {
			b.Fatal(err)
		}
	}
}
