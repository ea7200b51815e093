package publish

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/index"
)

// upload is an Upload of data under key, digested the way callers do.
func upload(t *testing.T, data []byte) Upload {
	t.Helper()
	sum, chunks, n, err := index.Digest(bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("digest: %d bytes, %v", n, err)
	}
	return Upload{Key: key, Data: bytes.NewReader(data), Size: n, SHA256: sum, Chunks: chunks}
}

// putCall records what one Put did: its outcome and error, the outcomes
// its stored callback saw, and whether the object was recorded by then.
type putCall struct {
	Out      Outcome
	Err      error
	Stored   []Outcome
	Recorded bool // when stored was called
}

func put(t *testing.T, s backend.Store, rec *recorder, u Upload) putCall {
	t.Helper()
	var c putCall
	c.Out, c.Err = Put(context.Background(), s, rec, u, func(o Outcome) {
		c.Stored = append(c.Stored, o)
		_, c.Recorded = rec.get(u.Key)
	})
	return c
}

func readObject(t *testing.T, s backend.Store) []byte {
	t.Helper()
	rc, err := s.Open(context.Background(), key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkRecord checks that rec holds u with the store's size and mtime.
func checkRecord(t *testing.T, s backend.Store, rec *recorder, u Upload) {
	t.Helper()
	o, ok := rec.get(key)
	if !ok {
		t.Fatal("not recorded")
	}
	oi, err := s.Stat(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	want := index.Object{Key: key, Size: u.Size, ModTime: oi.ModTime, SHA256: u.SHA256, Chunks: u.Chunks}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("recorded %+v\nwant     %+v (the store's mtime %v)", o, want, oi.ModTime)
	}
}

// TestPutOutcomes: the upload rules every upload follows (the queue's and
// push's), against a real store: created and recorded; the same bytes
// again are already there and recorded; other bytes are a conflict, the
// store's are kept and ours are not recorded; a failed create or record
// is an error naming the step.
func TestPutOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) backend.Store
	}{
		{"file", func(t *testing.T) backend.Store {
			s, err := file.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"s3", func(t *testing.T) backend.Store { return s3Store(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.store(t)
			// larger than a chunk: the chunk digests are recorded too
			ours := rnd(index.ChunkSize + 1000)
			u := upload(t, ours)
			if len(u.Chunks) != 2 {
				t.Fatalf("%d chunk digests", len(u.Chunks))
			}

			rec := &recorder{}
			c := put(t, s, rec, u)
			if c.Out != Created || c.Err != nil || !reflect.DeepEqual(c.Stored, []Outcome{Created}) || c.Recorded {
				t.Fatalf("first upload: %+v, want created, stored told once before the record", c)
			}
			checkRecord(t, s, rec, u)
			if !bytes.Equal(readObject(t, s), ours) {
				t.Fatal("the store does not hold our bytes")
			}

			rec = &recorder{}
			c = put(t, s, rec, upload(t, ours))
			if c.Out != AlreadyThere || c.Err != nil || !reflect.DeepEqual(c.Stored, []Outcome{AlreadyThere}) {
				t.Fatalf("the same bytes again: %+v, want already there", c)
			}
			checkRecord(t, s, rec, u)

			rec = &recorder{}
			theirs := rnd(len(ours)) // same size, other bytes
			c = put(t, s, rec, upload(t, theirs))
			if c.Out != Conflict || c.Err != nil || len(c.Stored) != 0 {
				t.Fatalf("other bytes: %+v, want conflict, stored never told", c)
			}
			if _, ok := rec.get(key); ok {
				t.Fatal("a conflicting upload was recorded")
			}
			if !bytes.Equal(readObject(t, s), ours) {
				t.Fatal("the first writer's object was replaced")
			}

			// a failed create: nothing stored, told or recorded
			down := &flakyStore{Store: s}
			down.failing.Store(true)
			other := upload(t, rnd(100))
			other.Key = key + ".siginfo"
			rec = &recorder{}
			c.Out, c.Err = Put(context.Background(), down, rec, other, func(Outcome) { t.Error("stored told of a failed create") })
			if c.Out != Failed || !errors.Is(c.Err, errDown) {
				t.Fatalf("store down: %v, %v; want failed, %v", c.Out, c.Err, errDown)
			}
			if _, err := s.Stat(context.Background(), other.Key); !errors.Is(err, backend.ErrNotExist) {
				t.Fatalf("after a failed create: %v", err)
			}
			if len(rec.objs) != 0 {
				t.Fatalf("recorded: %+v", rec.objs)
			}

			// a failed record: the object is in the store (stored told),
			// the error says the record failed
			rec = &recorder{failing: true}
			c = put(t, s, rec, other)
			if c.Out != Failed || c.Err == nil || !strings.Contains(c.Err.Error(), "recording in the index") ||
				!reflect.DeepEqual(c.Stored, []Outcome{Created}) {
				t.Fatalf("journal down: %+v, want failed while recording, stored told of created", c)
			}
		})
	}
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{Failed: "failed", Created: "created", AlreadyThere: "already there", Conflict: "conflict", 9: "Outcome(9)"} {
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}

// TestQueueRecordsTheStoresMtime: what the queue records says what the
// store says (the object's mtime there), not the mount's clock.
func TestQueueRecordsTheStoresMtime(t *testing.T) {
	e := newEnv(t)
	clock := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC) // far from the store's clock
	q, err := Open(Options{Dir: e.dir, Store: e.store, Recorder: e.rec, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	data := rnd(1000)
	if err := q.Enqueue(key, e.file(t, "obj", data)); err != nil {
		t.Fatal(err)
	}
	run(t, q)
	if left := drain(t, q, 10*time.Second); len(left) != 0 {
		t.Fatalf("left in the queue: %+v", left)
	}
	checkRecord(t, e.store, e.rec, upload(t, data))
}
