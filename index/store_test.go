package index

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
)

func newStore(t *testing.T) *file.Store {
	t.Helper()
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// countingStore counts the calls that reach the store it wraps.
type countingStore struct {
	backend.Store
	mu    sync.Mutex
	opens map[string]int
	stats int
	// lists: the listings asked for, by where they start ("" for whole
	// ones); listed: the keys they returned.
	lists  []string
	listed int
}

func (c *countingStore) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	return c.ListAfter(ctx, prefix, "", fn)
}

func (c *countingStore) ListAfter(ctx context.Context, prefix, start string, fn func(backend.ObjectInfo) error) error {
	c.mu.Lock()
	c.lists = append(c.lists, start)
	c.mu.Unlock()
	return backend.ListAfter(ctx, c.Store, prefix, start, func(oi backend.ObjectInfo) error {
		c.mu.Lock()
		c.listed++
		c.mu.Unlock()
		return fn(oi)
	})
}

// Listings returns the listings since the last call and the keys they returned.
func (c *countingStore) Listings() ([]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, n := c.lists, c.listed
	c.lists, c.listed = nil, 0
	return l, n
}

func newCounting(s backend.Store) *countingStore {
	return &countingStore{Store: s, opens: map[string]int{}}
}

func (c *countingStore) Unwrap() backend.Store { return c.Store }

func (c *countingStore) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.mu.Lock()
	c.opens[key]++
	c.mu.Unlock()
	return c.Store.Open(ctx, key, off, n)
}

func (c *countingStore) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	c.mu.Lock()
	c.stats++
	c.mu.Unlock()
	return c.Store.Stat(ctx, key)
}

func (c *countingStore) Opens(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opens[key]
}

func (c *countingStore) TotalOpens() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.opens {
		n += v
	}
	return n
}

// ObjectOpens counts the opens of objects, not of index metadata.
func (c *countingStore) ObjectOpens() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.opens {
		if !backend.IsMeta(k) {
			n += v
		}
	}
	return n
}

func (c *countingStore) Stats() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

func TestSaveLoad(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	ix := New(randomObjects(realisticKeys(t), 11), time.Now())
	if err := Save(ctx, s, ix); err != nil {
		t.Fatal(err)
	}
	got, err := Load(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(collect(got), collect(ix)) || !got.Created().Equal(ix.Created()) {
		t.Error("loaded index differs from the saved one")
	}
	// Saving again replaces it.
	ix2 := New(randomObjects([]string{"a/b"}, 12), time.Now())
	if err := Save(ctx, s, ix2); err != nil {
		t.Fatal(err)
	}
	if got, err := Load(ctx, s); err != nil || got.Len() != 1 {
		t.Errorf("after a second Save: %d objects, %v", got.Len(), err)
	}
}

func TestLoadNoIndex(t *testing.T) {
	s := newStore(t)
	ix, err := Load(context.Background(), s)
	if !errors.Is(err, ErrNoIndex) || ix != nil {
		t.Fatalf("Load of an empty store = %v, %v; want ErrNoIndex", ix, err)
	}
	if !strings.Contains(err.Error(), s.Location()) {
		t.Errorf("error %q does not name the store", err)
	}
}

func TestLoadCorrupt(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	b := encode(t, New(randomObjects(realisticKeys(t)[:10], 13), time.Now()))
	b[len(b)/2] ^= 1
	if err := s.Put(ctx, SnapshotKey, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	_, err := Load(ctx, s)
	if !errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNoIndex) {
		t.Fatalf("Load = %v, want ErrCorrupt", err)
	}
	for _, want := range []string{s.Location() + "/" + SnapshotKey, "checksum mismatch"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// readOnlyStore refuses writes, like an HTTP mirror.
type readOnlyStore struct{ backend.Store }

func (readOnlyStore) Put(context.Context, string, io.Reader, int64) error {
	return backend.ErrReadOnly
}

func TestSaveError(t *testing.T) {
	s := readOnlyStore{newStore(t)}
	err := Save(context.Background(), s, New(nil, time.Now()))
	if !errors.Is(err, backend.ErrReadOnly) || !strings.Contains(err.Error(), SnapshotKey) {
		t.Errorf("Save = %v, want ErrReadOnly naming the key", err)
	}
	if err := Save(context.Background(), s, nil); err == nil {
		t.Error("Save of a nil index succeeded")
	}
}
