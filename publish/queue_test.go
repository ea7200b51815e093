package publish

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/index"
)

// flakyStore wraps a real file store; while failing is set, Create fails.
type flakyStore struct {
	backend.Store
	creates atomic.Int64
	failing atomic.Bool
}

var errDown = errors.New("store down")

func (s *flakyStore) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	s.creates.Add(1)
	if s.failing.Load() {
		return errDown
	}
	return s.Store.Create(ctx, key, r, size)
}

type recorder struct {
	mu      sync.Mutex
	objs    map[string]index.Object
	failing bool
}

func (r *recorder) Added(ctx context.Context, o index.Object) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failing {
		return errors.New("journal unavailable")
	}
	if r.objs == nil {
		r.objs = map[string]index.Object{}
	}
	r.objs[o.Key] = o
	return nil
}

func (r *recorder) get(key string) (index.Object, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.objs[key]
	return o, ok
}

const key = "ab/cd/sstate:p:a:1:r0:x:14:abcd0000000000000000000000000000000000000000000000000000000000ef_populate_sysroot.tar.zst"

type env struct {
	dir, storeDir, src string
	store              *flakyStore
	rec                *recorder
}

func newEnv(t *testing.T) *env {
	e := &env{dir: t.TempDir(), storeDir: t.TempDir(), src: t.TempDir(), rec: &recorder{}}
	fs, err := file.New(e.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	e.store = &flakyStore{Store: fs}
	return e
}

func (e *env) open(t *testing.T) *Queue {
	q, err := Open(Options{Dir: e.dir, Store: e.store, Recorder: e.rec, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func (e *env) file(t *testing.T, name string, data []byte) string {
	p := filepath.Join(e.src, name)
	if err := os.WriteFile(p, data, 0o664); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, q *Queue) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func drain(t *testing.T, q *Queue, d time.Duration) []Entry {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return q.Drain(ctx)
}

func rnd(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestPublishUploadsAndRecords(t *testing.T) {
	e := newEnv(t)
	q := e.open(t)
	data := rnd(100_000)
	p := e.file(t, "tmpXYZ", data)
	if err := q.Enqueue(key, p); err != nil {
		t.Fatal(err)
	}
	os.Remove(p) // bitbake unlinks its temp name; the queue holds its own link
	run(t, q)
	if left := drain(t, q, 10*time.Second); len(left) != 0 {
		t.Fatalf("left in the queue: %+v", left)
	}
	got, err := os.ReadFile(filepath.Join(e.storeDir, key))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("store holds %d bytes, %v", len(got), err)
	}
	o, ok := e.rec.get(key)
	if !ok || o.Size != int64(len(data)) || o.SHA256 != sha256.Sum256(data) {
		t.Fatalf("journal record %+v, %v", o, ok)
	}
	if s := q.Stats(); s.Uploaded != 1 || s.UploadedBytes != int64(len(data)) {
		t.Errorf("stats %+v", s)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "data")); len(ents) != 0 {
		t.Errorf("data left behind: %v", ents)
	}
}

func TestRetryWithBackoffUntilStoreReturns(t *testing.T) {
	e := newEnv(t)
	e.store.failing.Store(true)
	q := e.open(t)
	run(t, q)
	if err := q.Enqueue(key, e.file(t, "a", []byte("abc"))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.store.creates.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ents := q.Entries()
	if len(ents) != 1 || ents[0].Attempts < 2 || ents[0].LastError == "" {
		t.Fatalf("while the store is down: %+v", ents)
	}
	// the status another process reads from disk says the same
	disk, err := ReadEntries(e.dir)
	if err != nil || len(disk) != 1 || disk[0].LastError == "" {
		t.Fatalf("ReadEntries = %+v, %v", disk, err)
	}
	if _, err := os.Stat(filepath.Join(e.storeDir, key)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("object visible while every upload failed")
	}
	e.store.failing.Store(false)
	if left := drain(t, q, 10*time.Second); len(left) != 0 {
		t.Fatalf("not uploaded after the store came back: %+v", left)
	}
	if _, ok := e.rec.get(key); !ok {
		t.Fatal("not recorded")
	}
}

func TestDrainReportsWhatIsLeft(t *testing.T) {
	e := newEnv(t)
	e.store.failing.Store(true)
	q := e.open(t)
	run(t, q)
	q.Enqueue(key, e.file(t, "a", []byte("abc")))
	start := time.Now()
	left := drain(t, q, 300*time.Millisecond)
	if len(left) != 1 || left[0].Key != key {
		t.Fatalf("Drain left %+v", left)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Drain ignored its deadline: %v", d)
	}
}

func TestResumeAfterRestart(t *testing.T) {
	e := newEnv(t)
	q := e.open(t) // never run: the process "dies" with the entry queued
	data := rnd(5000)
	if err := q.Enqueue(key, e.file(t, "a", data)); err != nil {
		t.Fatal(err)
	}
	// a crash in the middle of writing an entry or linking data leaves
	// temp files: a restart clears them
	torn := filepath.Join(e.dir, "tmp", idFor(key)+".1234.json")
	os.WriteFile(torn, []byte("{half"), 0o600)
	q2 := e.open(t)
	if q2.Len() != 1 {
		t.Fatalf("restarted queue has %d entries", q2.Len())
	}
	if _, err := os.Stat(torn); !os.IsNotExist(err) {
		t.Errorf("half-written temp file kept after a restart: %v", err)
	}
	run(t, q2)
	if left := drain(t, q2, 10*time.Second); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
	if got, _ := os.ReadFile(filepath.Join(e.storeDir, key)); !bytes.Equal(got, data) {
		t.Fatal("resumed upload stored other bytes")
	}
}

func TestUploadedButNotRecordedIsRecordedOnce(t *testing.T) {
	e := newEnv(t)
	e.rec.failing = true
	q := e.open(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done }) // also when the test stops early
	q.Enqueue(key, e.file(t, "a", []byte("payload")))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ents := q.Entries(); len(ents) == 1 && ents[0].State == Uploaded {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if ents, _ := ReadEntries(e.dir); len(ents) != 1 || ents[0].State != Uploaded {
		t.Fatalf("on disk: %+v", ents)
	}
	creates := e.store.creates.Load()
	e.rec.mu.Lock()
	e.rec.failing = false
	e.rec.mu.Unlock()
	q2 := e.open(t)
	run(t, q2)
	if left := drain(t, q2, 10*time.Second); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
	if e.store.creates.Load() != creates {
		t.Errorf("uploaded again after restart (%d creates, want %d)", e.store.creates.Load(), creates)
	}
	if _, ok := e.rec.get(key); !ok {
		t.Fatal("never recorded")
	}
}

func TestFirstWriterWins(t *testing.T) {
	e := newEnv(t)
	theirs := []byte("published by another builder")
	os.MkdirAll(filepath.Dir(filepath.Join(e.storeDir, key)), 0o755)
	os.WriteFile(filepath.Join(e.storeDir, key), theirs, 0o644)
	q := e.open(t)
	run(t, q)
	q.Enqueue(key, e.file(t, "a", []byte("our different bytes")))
	if left := drain(t, q, 10*time.Second); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
	if got, _ := os.ReadFile(filepath.Join(e.storeDir, key)); !bytes.Equal(got, theirs) {
		t.Fatal("an existing object was overwritten")
	}
	if _, ok := e.rec.get(key); ok {
		t.Error("our digest was recorded for their object")
	}
	if s := q.Stats(); s.Conflicts != 1 {
		t.Errorf("stats %+v, want 1 conflict", s)
	}
	// the same bytes already there (our own earlier upload): recorded
	other := "ab/cd/sstate:p:a:1:r0:x:14:abcd0000000000000000000000000000000000000000000000000000000000ef_package.tar.zst"
	os.WriteFile(filepath.Join(e.storeDir, other), []byte("same"), 0o644)
	q.Enqueue(other, e.file(t, "b", []byte("same")))
	if left := drain(t, q, 10*time.Second); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
	if o, ok := e.rec.get(other); !ok || o.SHA256 != sha256.Sum256([]byte("same")) {
		t.Error("identical existing object not recorded")
	}
}

func TestReadOnly(t *testing.T) {
	e := newEnv(t)
	q := e.open(t)
	q.SetReadOnly(true)
	if err := q.Enqueue(key, e.file(t, "a", []byte("x"))); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Enqueue on a read-only store = %v", err)
	}
	if q.Len() != 0 {
		t.Fatal("queued anyway")
	}
}

func TestTornEntryMovedAside(t *testing.T) {
	e := newEnv(t)
	q := e.open(t)
	q.Enqueue(key, e.file(t, "a", []byte("x")))
	p := q.entryPath(key)
	os.WriteFile(p, []byte("{not json"), 0o600)
	q2 := e.open(t)
	if q2.Len() != 0 {
		t.Fatal("torn entry loaded")
	}
	if _, err := os.Stat(p + ".bad"); err != nil {
		t.Fatalf("torn entry not kept aside: %v", err)
	}
}

func TestMoreEntriesThanWorkers(t *testing.T) {
	e := newEnv(t)
	q, err := Open(Options{Dir: e.dir, Store: e.store, Recorder: e.rec, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 9 {
		k := strings.Replace(key, "populate_sysroot", fmt.Sprint("t", i), 1)
		if err := q.Enqueue(k, e.file(t, fmt.Sprint("f", i), rnd(1000))); err != nil {
			t.Fatal(err)
		}
	}
	run(t, q)
	if left := drain(t, q, 20*time.Second); len(left) != 0 {
		t.Fatalf("%d of 9 entries left with 2 workers", len(left))
	}
	if n := e.store.creates.Load(); n != 9 {
		t.Errorf("%d creates, want 9", n)
	}
}
