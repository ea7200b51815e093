package cache

import (
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
)

// StatCache remembers the answers of store probes (HEAD requests) for stores
// without an index: present objects with their size and mtime, and absent
// names, each for its own TTL, so a build's thousands of exists checks do
// not each cost a round trip.
type StatCache struct {
	present *expirable.LRU[string, Info]
	absent  *expirable.LRU[string, struct{}]
}

// Info is what a probe found out about a present object.
type Info struct {
	Size    int64
	ModTime time.Time
}

// NewStatCache returns a cache of at most size entries of each kind.
func NewStatCache(size int, presentTTL, absentTTL time.Duration) *StatCache {
	return &StatCache{
		present: expirable.NewLRU[string, Info](size, nil, presentTTL),
		absent:  expirable.NewLRU[string, struct{}](size, nil, absentTTL),
	}
}

// Get returns (info, true, true) for a known present key, (_, false, true)
// for a known absent one and (_, _, false) when the key must be probed.
func (s *StatCache) Get(key string) (info Info, present, known bool) {
	if info, ok := s.present.Get(key); ok {
		return info, true, true
	}
	if _, ok := s.absent.Get(key); ok {
		return Info{}, false, true
	}
	return Info{}, false, false
}

// Present records a present object.
func (s *StatCache) Present(key string, info Info) {
	s.absent.Remove(key)
	s.present.Add(key, info)
}

// Absent records an absent name.
func (s *StatCache) Absent(key string) {
	s.present.Remove(key)
	s.absent.Add(key, struct{}{})
}

// Forget drops what is known about key (it was just created or removed).
func (s *StatCache) Forget(key string) {
	s.present.Remove(key)
	s.absent.Remove(key)
}
