package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"

	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/view"
)

// makeEntry creates key in the overlay with create (given its path),
// unless it is the store's metadata or exists already, and gives it to the
// caller. Creating an object's name is the publishers' alone.
func (o *Overlay) makeEntry(ctx context.Context, c access.Caller, op, key string, create func(p string) error) (string, error) {
	if view.Hidden(key) {
		return "", fmt.Errorf("%s %s: the store's metadata: %w", op, key, ErrPermission)
	}
	if o.exists(ctx, key) {
		return "", fmt.Errorf("%s %s: %w", op, key, ErrExist)
	}
	if IsObjectName(key) {
		if err := o.allowPublish(c, op, key); err != nil {
			return "", err
		}
	}
	if err := o.makeParent(key); err != nil {
		return "", fmt.Errorf("%s %s: %w", op, key, err)
	}
	p := o.Path(key)
	if err := create(p); err != nil {
		return "", fmt.Errorf("%s %s: %w", op, key, err)
	}
	o.names.add(key)
	o.chownToCaller(c, p)
	return p, nil
}

// Mkdir makes directory key with mode (the caller's umask applied, this
// process's not).
func (o *Overlay) Mkdir(ctx context.Context, c access.Caller, key string, mode uint32) error {
	_, err := o.makeEntry(ctx, c, "mkdir", key, func(p string) error {
		if err := syscall.Mkdir(p, mode); err != nil {
			return err
		}
		return syscall.Chmod(p, mode&0o7777)
	})
	if err != nil {
		return err
	}
	o.unhide(ctx, "mkdir", key)
	return nil
}

// Symlink makes key a symbolic link to target and returns its attributes.
func (o *Overlay) Symlink(ctx context.Context, c access.Caller, target, key string) (syscall.Stat_t, error) {
	var st syscall.Stat_t
	p, err := o.makeEntry(ctx, c, "symlink", key, func(p string) error { return syscall.Symlink(target, p) })
	if err != nil {
		return st, err
	}
	if err := syscall.Lstat(p, &st); err != nil {
		return st, fmt.Errorf("symlink %s: %w", key, err)
	}
	o.unhide(ctx, "symlink", key)
	return st, nil
}

// Rmdir removes directory key. A store directory (which cannot be empty
// of store objects unless they are all hidden) is hidden by a whiteout:
// the publishers' alone.
func (o *Overlay) Rmdir(ctx context.Context, c access.Caller, key string) error {
	// Refuse while the directory shows anything of the store.
	for _, e := range o.store.ReadDir(key) {
		if !o.whiteouts.has(view.Join(key, e.Name)) {
			return fmt.Errorf("rmdir %s: %w", key, ErrNotEmpty)
		}
	}
	inStore := o.store.IsDir(key)
	if inStore {
		if err := o.allowPublish(c, "rmdir", key); err != nil {
			return err
		}
	}
	err := syscall.Rmdir(o.Path(key))
	switch {
	case err == nil:
		o.names.remove(key)
	case errors.Is(err, syscall.ENOENT) && inStore:
	default:
		return fmt.Errorf("rmdir %s: %w", key, err)
	}
	if inStore {
		return o.hide("rmdir", key)
	}
	return nil
}

// Create opens key for a create(2) with flags and mode: a new overlay file
// gets the caller as owner and exactly mode; one that exists already (not
// with O_EXCL) is opened as it is. Creating an object's name is the
// publishers' alone: bitbake never does (it links or renames a temp file
// onto it), but bytes written there are served as the object all the
// same. The descriptor is the caller's to close.
func (o *Overlay) Create(ctx context.Context, c access.Caller, key string, flags int, mode uint32) (int, syscall.Stat_t, error) {
	var st syscall.Stat_t
	if view.Hidden(key) {
		return -1, st, fmt.Errorf("create %s: the store's metadata: %w", key, ErrPermission)
	}
	if flags&syscall.O_EXCL != 0 && o.exists(ctx, key) {
		return -1, st, fmt.Errorf("create %s: %w", key, ErrExist)
	}
	if IsObjectName(key) {
		if err := o.allowPublish(c, "create", key); err != nil {
			return -1, st, err
		}
	}
	if err := o.makeParent(key); err != nil {
		return -1, st, fmt.Errorf("create %s: %w", key, err)
	}
	p := o.Path(key)
	// The kernel applied the caller's umask; this process's must not apply
	// again, or 0664 becomes 0644 and the group cannot publish.
	base := flags&^(syscall.O_APPEND|syscall.O_CREAT|syscall.O_EXCL) | syscall.O_CLOEXEC
	fd, err := syscall.Open(p, base|syscall.O_CREAT|syscall.O_EXCL, mode)
	created := err == nil
	if errors.Is(err, syscall.EEXIST) && flags&syscall.O_EXCL == 0 {
		fd, err = syscall.Open(p, base, 0)
	}
	if err != nil {
		return -1, st, fmt.Errorf("create %s: %w", key, err)
	}
	o.names.add(key)
	if created {
		if err := syscall.Fchmod(fd, mode&0o7777); err != nil {
			syscall.Close(fd)
			return -1, st, fmt.Errorf("create %s: %w", key, err)
		}
		o.chownToCaller(c, p)
	}
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return -1, st, fmt.Errorf("create %s: %w", key, err)
	}
	o.unhide(ctx, "create", key)
	o.store.Forget(key)
	return fd, st, nil
}

// Unlink removes key from the overlay and, if it is a store object, hides
// it (the store is not changed). Hiding a store object or removing an
// object's name is the publishers' alone.
func (o *Overlay) Unlink(ctx context.Context, c access.Caller, key string) error {
	if view.Hidden(key) {
		return fmt.Errorf("unlink %s: %w", key, ErrNotExist)
	}
	inStore := false
	if !o.whiteouts.has(key) {
		_, err := o.store.Stat(ctx, key)
		inStore = err == nil
	}
	if inStore || IsObjectName(key) {
		if err := o.allowPublish(c, "unlink", key); err != nil {
			return err
		}
	}
	removed := false
	switch err := syscall.Unlink(o.Path(key)); {
	case err == nil:
		o.names.remove(key)
		removed = true
	case errors.Is(err, syscall.ENOENT):
	default:
		return fmt.Errorf("unlink %s: %w", key, err)
	}
	if inStore {
		if err := o.hide("unlink", key); err != nil {
			return err
		}
		removed = true
	}
	if !removed {
		return fmt.Errorf("unlink %s: %w", key, ErrNotExist)
	}
	return nil
}

// RenameNoReplace is rename(2)'s RENAME_NOREPLACE; the other flags
// (RENAME_EXCHANGE, RENAME_WHITEOUT) are refused with ErrInvalid.
const RenameNoReplace = 1

// Rename moves the overlay entry from to to. A regular file renamed onto an
// object's name is published (Options.Publish); if that fails the rename is
// undone and the publish's error returned. Publishing onto an object's
// name, or moving an object's name away (which hides a store object of
// that name), is the publishers' alone. A store object or directory cannot
// move: ErrCrossDevice, which makes mv copy and unlink instead.
func (o *Overlay) Rename(ctx context.Context, c access.Caller, from, to string, flags uint32) error {
	if view.Hidden(from) || view.Hidden(to) {
		return fmt.Errorf("rename %s to %s: the store's metadata: %w", from, to, ErrPermission)
	}
	if flags&^RenameNoReplace != 0 {
		return fmt.Errorf("rename %s: flags %#x: %w", from, flags, ErrInvalid)
	}
	if flags&RenameNoReplace != 0 && o.exists(ctx, to) {
		return fmt.Errorf("rename onto %s: %w", to, ErrExist)
	}
	_, fromErr := o.store.Stat(ctx, from)
	fromStore := fromErr == nil
	if IsObjectName(to) || IsObjectName(from) || fromStore {
		if err := o.allowPublish(c, "rename", to); err != nil {
			return err
		}
	}
	src := o.Path(from)
	var st syscall.Stat_t
	if err := syscall.Lstat(src, &st); err != nil {
		if errors.Is(err, syscall.ENOENT) && o.exists(ctx, from) {
			return fmt.Errorf("rename %s: %w", from, ErrCrossDevice)
		}
		return fmt.Errorf("rename %s: %w", from, err)
	}
	isDir := st.Mode&syscall.S_IFMT == syscall.S_IFDIR
	if isDir && (o.store.IsDir(from) || o.store.IsDir(to)) {
		return fmt.Errorf("rename %s to %s: a store directory: %w", from, to, ErrCrossDevice)
	}
	if err := o.makeParent(to); err != nil {
		return fmt.Errorf("rename onto %s: %w", to, err)
	}
	dst := o.Path(to)
	if err := syscall.Rename(src, dst); err != nil {
		return fmt.Errorf("rename %s to %s: %w", from, to, err)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG && o.publishes(to) {
		if err := o.publish(ctx, to, dst); err != nil {
			// Undo, so that the caller does not believe in a publication
			// that would be lost. (A name replaced by the rename is gone.)
			if uerr := syscall.Rename(dst, src); uerr != nil {
				o.log.Error("rename: could not undo after a failed publish", "object", to, "error", uerr)
			}
			return fmt.Errorf("publishing %s: %w", to, err)
		}
	}
	if isDir {
		o.names.removeTree(from)
		if err := o.names.addTree(o.dir, to); err != nil {
			o.log.Error("rename: could not list the moved directory", "dir", to, "error", err)
		}
	} else {
		o.names.remove(from)
		o.names.add(to)
	}
	// The source name must not fall back to a store object of that name:
	// the rename has happened, so a failure to hide it is logged.
	if fromStore {
		if err := o.whiteouts.add(from); err != nil {
			o.log.LogAttrs(ctx, slog.LevelError, "rename: the store object of the old name shows again after a restart", slog.String("object", from), slog.String("error", err.Error()))
		}
	}
	o.unhide(ctx, "rename", to)
	o.store.Forget(to)
	return nil
}

// Link makes key a hard link to the overlay file src and returns its
// attributes; src "" is a store object, which has no local file to link:
// ErrCrossDevice (never ENOSYS, which bitbake treats as fatal). A link
// onto an object's name publishes it (Options.Publish); if that fails the
// link is removed and the publish's error returned.
func (o *Overlay) Link(ctx context.Context, c access.Caller, src, key string) (syscall.Stat_t, error) {
	var st syscall.Stat_t
	if view.Hidden(key) {
		return st, fmt.Errorf("link %s: the store's metadata: %w", key, ErrPermission)
	}
	if src == "" {
		o.log.Warn("link: source is a store object, refusing with EXDEV", "link", key)
		return st, fmt.Errorf("link %s: the source is a store object: %w", key, ErrCrossDevice)
	}
	if o.exists(ctx, key) {
		return st, fmt.Errorf("link %s: %w", key, ErrExist)
	}
	if IsObjectName(key) {
		if err := o.allowPublish(c, "link", key); err != nil {
			return st, err
		}
	}
	if err := o.makeParent(key); err != nil {
		return st, fmt.Errorf("link %s: %w", key, err)
	}
	p := o.Path(key)
	if err := syscall.Link(o.Path(src), p); err != nil {
		return st, fmt.Errorf("link %s to %s: %w", src, key, err)
	}
	if err := syscall.Lstat(p, &st); err != nil {
		return st, fmt.Errorf("link %s: %w", key, err)
	}
	if o.publishes(key) {
		if err := o.publish(ctx, key, p); err != nil {
			if uerr := syscall.Unlink(p); uerr != nil {
				o.log.Error("link: could not undo after a failed publish", "object", key, "error", uerr)
			}
			return st, fmt.Errorf("publishing %s: %w", key, err)
		}
	}
	o.names.add(key)
	o.unhide(ctx, "link", key)
	o.store.Forget(key)
	return st, nil
}
