package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"

	"github.com/sstatefs/sstatefs/internal/units"
)

// The cache is bounded by the free space of its file system as well as by
// Options.MaxBytes: with the default 20 GiB bound on a smaller disk, every
// download failed with ENOSPC once the disk was full and nothing was ever
// evicted. Entries are evicted, least recently used first, so that a
// download has room before it starts, and so that a margin stays free after
// an object is filed (for other downloads and for whoever else uses the
// file system). A write that still finds the disk full (concurrent
// downloads, other users) evicts and is retried once.

// spaceMargin is what the cache leaves free on a file system of total
// bytes: 1/32 of it, at most 1 GiB.
func spaceMargin(total int64) int64 { return min(total/32, 1<<30) }

// diskSpace returns the size of the file system holding dir and the bytes
// available on it.
func diskSpace(dir string) (total, free int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("cache: statfs %s: %w", dir, err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// warnOversized logs when the size bound exceeds the cache's file system.
func (c *Cache) warnOversized() {
	total, free, err := diskSpace(c.dir)
	if err != nil {
		c.log.Warn("cannot tell the free space of the cache's file system", "error", err)
		return
	}
	if c.max > total {
		c.log.LogAttrs(context.Background(), slog.LevelWarn, "cache size exceeds its file system: the free space bounds the cache instead",
			slog.String("dir", c.dir), slog.String("cache_size", units.Bytes(c.max)),
			slog.String("filesystem_size", units.Bytes(total)), slog.String("available", units.Bytes(free)))
	}
}

// makeRoomLocked evicts least recently used entries (sparing keep) until
// need bytes plus the margin are free on the cache's file system, as far as
// evicting can get there. An entry
// a reader still holds open frees its space only when closed: the estimate
// then errs on the side of space that is not there yet, which the retry of
// a write that hits ENOSPC covers.
func (c *Cache) makeRoomLocked(need int64, keep string) {
	total, free, err := diskSpace(c.dir)
	if err != nil {
		return // the bound of MaxBytes still holds
	}
	want := need + spaceMargin(total)
	if free >= want || need > total {
		return // room enough, or never enough
	}
	for free < want && c.lru.Len() > 0 {
		id, size, _ := c.lru.GetOldest()
		if id == keep {
			if c.lru.Len() == 1 {
				break
			}
			c.lru.Get(keep)
			continue
		}
		c.evictOneLocked(id, size)
		free += size
	}
}

// writeAt writes p at off into the download's temp file; when the disk is
// full it evicts to make room for the rest of the object and tries once
// more.
func (c *Cache) writeAt(d *download, p []byte, off int64) error {
	_, err := d.tmp.WriteAt(p, off)
	if errors.Is(err, syscall.ENOSPC) {
		// retry even when nothing was evicted here: a concurrent download
		// may just have made room
		c.mu.Lock()
		c.makeRoomLocked(d.size-off, d.obj.ID)
		c.mu.Unlock()
		_, err = d.tmp.WriteAt(p, off)
	}
	if err != nil {
		return fmt.Errorf("cache: %s: %w", d.obj.Name, err)
	}
	return nil
}

// makeRoom is makeRoomLocked for a download about to start.
func (c *Cache) makeRoom(need int64) {
	c.mu.Lock()
	c.makeRoomLocked(need, "")
	c.mu.Unlock()
}
