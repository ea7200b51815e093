package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/sstatefs/sstatefs/backend"
)

// snapshotLocation names the snapshot of s in messages.
func snapshotLocation(s backend.Store) string {
	return s.Location() + "/" + SnapshotKey
}

// Load reads the whole index of s: it is LoadAll, under the name callers
// used before the journal existed (`sstatefs index show` and `index build`
// thus see the snapshot and the journal merged).
func Load(ctx context.Context, s backend.Store) (*Index, error) {
	return LoadAll(ctx, s)
}

// LoadSnapshot reads the index snapshot of s alone, without the journal.
// When the store has none, the error wraps ErrNoIndex; a damaged snapshot
// gives an error wrapping ErrCorrupt that names the store location and key.
func LoadSnapshot(ctx context.Context, s backend.Store) (*Index, error) {
	rc, err := s.Open(ctx, SnapshotKey, 0, -1)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, fmt.Errorf("load index %s: %w", snapshotLocation(s), ErrNoIndex)
	}
	if err != nil {
		return nil, fmt.Errorf("load index %s: %w", snapshotLocation(s), err)
	}
	defer rc.Close()
	ix, err := Decode(rc)
	if err != nil {
		return nil, fmt.Errorf("load index %s: %w", snapshotLocation(s), err)
	}
	return ix, nil
}

// Save encodes ix in memory and replaces the snapshot of s with it
// atomically (backend.Store.Put), so readers see the old snapshot or the
// new one, never a mix. The snapshot covers the segments ix.Covered lists:
// readers skip them and a compaction may delete them, so ix must include
// their records (as the indexes of LoadAll, Build and Compact do).
func Save(ctx context.Context, s backend.Store, ix *Index) error {
	var buf bytes.Buffer
	if err := Encode(&buf, ix); err != nil {
		return err
	}
	if err := s.Put(ctx, SnapshotKey, bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		return fmt.Errorf("save index %s: %w", snapshotLocation(s), err)
	}
	return nil
}
