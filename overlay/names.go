package overlay

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
)

// nameSet is the set of names the overlay holds, kept in memory so
// that a lookup of a store object (nearly every lookup bitbake makes) asks
// the overlay directory only when it has the name: the overlay changes
// only through this mount, which updates the set with every change it
// makes. A name in the set is still checked with lstat, so a stale entry
// costs a syscall, never a wrong answer; a missing one would hide an
// overlay file, which is why every change below is made after the
// syscall succeeded and directory renames rescan what they moved.
type nameSet struct {
	mu    sync.RWMutex // protects names
	names map[string]struct{}
}

// loadNames walks the overlay directory.
func loadNames(root string) (*nameSet, error) {
	o := &nameSet{names: map[string]struct{}{}}
	return o, o.addTree(root, "")
}

func (o *nameSet) has(key string) bool {
	o.mu.RLock()
	_, ok := o.names[key]
	o.mu.RUnlock()
	return ok
}

func (o *nameSet) add(key string) {
	o.mu.Lock()
	o.names[key] = struct{}{}
	o.mu.Unlock()
}

func (o *nameSet) remove(key string) {
	o.mu.Lock()
	delete(o.names, key)
	o.mu.Unlock()
}

// addTree adds key and everything below it in the overlay rooted at root
// ("" for the whole overlay).
func (o *nameSet) addTree(root, key string) error {
	top := filepath.Join(root, filepath.FromSlash(key))
	var found []string
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == top && errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipAll
			}
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		found = append(found, filepath.ToSlash(rel))
		return nil
	})
	o.mu.Lock()
	for _, k := range found {
		o.names[k] = struct{}{}
	}
	o.mu.Unlock()
	return err
}

// removeTree removes key and every name below it.
func (o *nameSet) removeTree(key string) {
	prefix := key + "/"
	o.mu.Lock()
	delete(o.names, key)
	for k := range o.names {
		if strings.HasPrefix(k, prefix) {
			delete(o.names, k)
		}
	}
	o.mu.Unlock()
}
