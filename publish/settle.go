package publish

import (
	"errors"
	"io/fs"

	"path/filepath"

	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/sstate"
)

// SettleResult counts what Settle did.
type SettleResult struct {
	Moved int
	Bytes int64
}

// Settle moves published objects out of the local overlay into the bounded
// disk cache once the store has them: a file of the sstate grammar that is
// not queued and whose bytes match the index entry of its name. That keeps
// the overlay from growing without bound on long-lived hosts. It runs before
// the mount starts, when no kernel state refers to overlay files. Files that
// differ from the store's object (first writer wins elsewhere) stay: they
// are what this host built and keep shadowing the store's object here.
func Settle(overlay string, q *Queue, ix *index.Index, c *cache.Cache, origin string) (SettleResult, error) {
	var res SettleResult
	if ix.Len() == 0 {
		return res, nil
	}
	queued := map[string]bool{}
	for _, e := range q.Entries() {
		queued[e.Key] = true
	}
	err := filepath.WalkDir(overlay, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(overlay, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if queued[key] {
			return nil
		}
		if _, err := sstate.Parse(key); err != nil {
			return nil
		}
		o, ok := ix.Lookup(key)
		if !ok || o.SHA256 == ([32]byte{}) {
			return nil
		}
		fi, err := d.Info()
		if err != nil || fi.Size() != o.Size {
			return nil
		}
		err = c.Adopt(p, cache.Object{
			ID: cache.IDFor(o.SHA256, origin+"/"+key, o.Size, o.ModTime), Size: o.Size, SHA256: o.SHA256, Name: key,
		})
		if errors.Is(err, cache.ErrCorrupt) {
			return nil // our own, different build of the object: keep it
		}
		if err != nil {
			return err
		}
		res.Moved++
		res.Bytes += o.Size
		return nil
	})
	return res, err
}
