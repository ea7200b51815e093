// Package indextest writes index fixtures into a store for tests of the
// packages that read indexes.
package indextest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
)

// Write indexes the objects in s (a snapshot from index.Build), then
// records eqs and the access times accessed in a journal segment of
// writer, as a mount of s would have.
func Write(t testing.TB, s backend.Store, writer string, eqs []index.Equivalence, accessed map[string]time.Time) {
	t.Helper()
	ctx := context.Background()
	ix, err := index.Build(ctx, s, index.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := index.Save(ctx, s, ix); err != nil {
		t.Fatal(err)
	}
	j := index.NewJournal(s, index.JournalOptions{Writer: writer})
	for _, e := range eqs {
		if err := j.Reported(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	for k, at := range accessed {
		j.Accessed(k, at)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// Journal reads every journal segment of s, in key order.
func Journal(t testing.TB, s backend.Store) []*index.Segment {
	t.Helper()
	ctx := context.Background()
	var segs []*index.Segment
	err := s.List(ctx, index.JournalPrefix, func(oi backend.ObjectInfo) error {
		rc, err := s.Open(ctx, oi.Key, 0, -1)
		if err != nil {
			return err
		}
		defer rc.Close()
		seg, err := index.DecodeSegment(rc)
		if err != nil {
			return fmt.Errorf("%s: %w", oi.Key, err)
		}
		segs = append(segs, seg)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return segs
}
