package publish

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
)

// Outcome is what an upload did to the store.
type Outcome int

const (
	// Failed: the upload did not finish; the error says why.
	Failed Outcome = iota
	// Created: the store had no object of the name; ours is it now.
	Created
	// AlreadyThere: the store had an object of the name with our bytes
	// (pushed before, or our own upload before a crash).
	AlreadyThere
	// Conflict: the store has other bytes under the name. First writer
	// wins: theirs are kept, ours are neither stored nor recorded.
	Conflict
)

func (o Outcome) String() string {
	switch o {
	case Failed:
		return "failed"
	case Created:
		return "created"
	case AlreadyThere:
		return "already there"
	case Conflict:
		return "conflict"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Upload is one object to put in a store: Size bytes of Data, whose digest
// and chunk digests (index.Digest) the caller has computed from the same
// bytes.
type Upload struct {
	Key    string
	Data   io.ReaderAt
	Size   int64
	SHA256 [32]byte
	Chunks [][32]byte
}

// Put applies the upload rules to u: a conditional create (the object
// appears whole, an existing one is never replaced); if the name exists,
// the store's object is hashed and compared with ours; unless they
// conflict, the object is recorded in the index, only once it is in the
// store. stored (may be nil) is called between the two, when the object
// is in the store, so that a caller can note it before the record.
func Put(ctx context.Context, s backend.Store, rec Recorder, u Upload, stored func(Outcome)) (Outcome, error) {
	out, err := create(ctx, s, u)
	if err != nil || out == Conflict {
		return out, err
	}
	if stored != nil {
		stored(out)
	}
	if err := record(ctx, s, rec, u.Key, u.SHA256, u.Chunks); err != nil {
		return Failed, err
	}
	return out, nil
}

// create creates u in s unless the name exists, and then tells whether
// the store's object is ours.
func create(ctx context.Context, s backend.Store, u Upload) (Outcome, error) {
	err := s.Create(backend.WithSHA256(ctx, u.SHA256), u.Key, io.NewSectionReader(u.Data, 0, u.Size), u.Size)
	if err == nil {
		return Created, nil
	}
	if !errors.Is(err, backend.ErrExist) {
		return Failed, err
	}
	rc, err := s.Open(ctx, u.Key, 0, -1)
	if err != nil {
		return Failed, fmt.Errorf("object exists, comparing it: %w", err)
	}
	defer rc.Close()
	theirs, _, err := index.Sum(rc)
	if err != nil {
		return Failed, fmt.Errorf("object exists, comparing it: %w", err)
	}
	if theirs != u.SHA256 {
		return Conflict, nil
	}
	return AlreadyThere, nil
}

// record records an object that is in the store in the index, with the
// store's size and mtime, so that index and store agree.
func record(ctx context.Context, s backend.Store, rec Recorder, key string, sum [32]byte, chunks [][32]byte) error {
	oi, err := s.Stat(ctx, key)
	if err != nil {
		return fmt.Errorf("in the store, stat for the index: %w", err)
	}
	if index.NumChunks(oi.Size) != len(chunks) {
		chunks = nil // not the size hashed: the record must not claim them
	}
	if err := rec.Added(ctx, index.Object{Key: key, Size: oi.Size, ModTime: oi.ModTime, SHA256: sum, Chunks: chunks}); err != nil {
		return fmt.Errorf("recording in the index: %w", err)
	}
	return nil
}
