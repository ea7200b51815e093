package fs

import (
	"os"
	"path/filepath"

	"github.com/sstatefs/sstatefs/view"
)

// WarmDirsMax is the most directories WarmDirs shows the kernel.
const WarmDirsMax = 16384

// WarmDirs has the kernel learn the store's directories in one go, right
// after mounting: it lists, through the mount at mountpoint, the root and
// every store directory that holds directories (the levels above the
// objects: ab/, <NATIVELSBSTRING>/, <NATIVELSBSTRING>/ab/). The kernel
// reads directories with READDIRPLUS and keeps an entry for each directory
// in them (for an hour: see Lookup), so bitbake's check then costs one
// lookup per name instead of two in a store where most objects have a
// directory of their own (a store of a few thousand objects spreads them
// over as many of the 65,536 ab/cd/ directories). A store with more than
// max directories is left alone: there many objects share a directory, so
// its lookup is a small part of the check, and the kernel's and go-fuse's
// memory per directory would not pay off. It returns the number of
// directories shown.
func (f *FS) WarmDirs(mountpoint string, max int) (int, error) {
	var parents []string
	total := 0
	queue := []string{""}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		var sub []string
		for _, e := range f.view.ReadDir(d) {
			if e.IsDir {
				sub = append(sub, view.Join(d, e.Name))
			}
		}
		if len(sub) == 0 {
			continue
		}
		total += len(sub)
		if total > max {
			return 0, nil
		}
		parents = append(parents, d)
		queue = append(queue, sub...)
	}
	for _, d := range parents {
		if _, err := os.ReadDir(filepath.Join(mountpoint, filepath.FromSlash(d))); err != nil {
			return 0, err
		}
	}
	return total, nil
}
