package index

import (
	"strings"
	"time"
)

// Summary describes an index for `sstatefs index show`.
type Summary struct {
	Objects int
	Bytes   int64
	Created time.Time
	// ByTask counts packages (archives, not their .siginfo or .sig) by
	// bitbake task, e.g. "populate_sysroot".
	ByTask map[string]int
	// ByPrefix counts all objects by the directory above their ab/cd
	// levels: "" for top-level ab/cd, or the NATIVELSBSTRING like
	// "debian-12".
	ByPrefix map[string]int
	// Packages (.tar.zst, or .tgz before kirkstone), their .siginfo and
	// .sig companions. Other files count only in Objects and ByPrefix.
	Packages, Siginfo, Sig int
	// Accessed counts objects with a recorded access time; LastAccess is
	// the latest (zero if none).
	Accessed   int
	LastAccess time.Time
	// Equivalences counts the equivalence records in force (one per
	// method and taskhash).
	Equivalences int
	// Sources: the snapshot and journal segments the index was
	// assembled from, including segments skipped as unreadable.
	Sources Sources
}

// Summarize counts the objects of ix by kind, task and prefix.
func Summarize(ix *Index) Summary {
	s := Summary{
		Objects:  ix.Len(),
		Bytes:    ix.TotalSize(),
		Created:  ix.Created(),
		ByTask:   map[string]int{},
		ByPrefix: map[string]int{},
		Sources:  ix.Sources(),

		Equivalences: ix.NumEquivalences(),
	}
	if ix == nil {
		return s
	}
	var last uint32
	ix.each(func(r *run, i int) bool {
		key := r.key(i)
		if at := r.atime(i); at != 0 {
			s.Accessed++
			last = max(last, at)
		}
		dir, base := "", key
		if j := strings.LastIndexByte(key, '/'); j >= 0 {
			dir, base = key[:j], key[j+1:]
		}
		s.ByPrefix[sstatePrefix(dir)]++
		switch {
		case strings.HasSuffix(base, ".siginfo"):
			s.Siginfo++
		case strings.HasSuffix(base, ".sig"):
			s.Sig++
		case strings.HasSuffix(base, ".tar.zst") || strings.HasSuffix(base, ".tgz"):
			s.Packages++
			if task := sstateTask(base); task != "" {
				s.ByTask[task]++
			}
		}
		return true
	})
	s.LastAccess = fromSecs(last)
	return s
}

// sstatePrefix strips the hash directories (two levels, one before
// dunfell) from the directory of an object: "debian-12/ab/cd" → "debian-12".
func sstatePrefix(dir string) string {
	for range 2 {
		j := strings.LastIndexByte(dir, '/')
		if !isHexPair(dir[j+1:]) {
			break
		}
		dir = dir[:max(j, 0)]
	}
	return dir
}

func isHexPair(s string) bool {
	if len(s) != 2 {
		return false
	}
	for i := 0; i < 2; i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// sstateTask returns the task of a package name
// "sstate:<PN>:...:<hash>_<task>.tar.zst", or "" if the name is not one.
func sstateTask(base string) string {
	if !strings.HasPrefix(base, "sstate:") {
		return ""
	}
	base = strings.TrimSuffix(strings.TrimSuffix(base, ".tar.zst"), ".tgz")
	seg := base[strings.LastIndexByte(base, ':')+1:]
	_, task, ok := strings.Cut(seg, "_")
	if !ok {
		return ""
	}
	return task
}
