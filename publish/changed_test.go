package publish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/s3"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// changedAfterFirstAttempt publishes a file while the store is down, lets
// the queue hash it and fail once, changes the file through the name
// bitbake published (the queue's data is a hard link to it), brings the
// store back and drains the queue. The file's new bytes have the same size.
func changedAfterFirstAttempt(t *testing.T, e *env, q *Queue) (published []byte) {
	t.Helper()
	e.store.failing.Store(true)
	data := rnd(50_000)
	p := e.file(t, "obj", data)
	if err := q.Enqueue(key, p); err != nil {
		t.Fatal(err)
	}
	run(t, q)
	waitFor(t, "a failed attempt", func() bool { return q.Stats().Failures >= 1 })
	if err := os.WriteFile(p, rnd(len(data)), 0o664); err != nil { // same inode, other bytes
		t.Fatal(err)
	}
	e.store.failing.Store(false)
	if left := drain(t, q, 10*time.Second); len(left) != 0 {
		t.Fatalf("the changed file is still queued: %+v", left)
	}
	return data
}

// checkDropped checks that nothing was uploaded or recorded under key and
// that the queue counted and forgot the entry.
func checkDropped(t *testing.T, e *env, q *Queue, store backend.Store) {
	t.Helper()
	if _, err := store.Stat(context.Background(), key); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("the store has the object (%v): changed bytes uploaded under the published name", err)
	}
	if _, ok := e.rec.get(key); ok {
		t.Error("recorded in the journal")
	}
	if s := q.Stats(); s.Changed != 1 {
		t.Errorf("stats %+v, want Changed 1", s)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "data")); len(ents) != 0 {
		t.Errorf("data left behind: %v", ents)
	}
	if ents, _ := ReadEntries(e.dir); len(ents) != 0 {
		t.Errorf("entries left on disk: %+v", ents)
	}
}

// TestChangedFileDropped: a queued file changed through its other hard link
// before its upload is not uploaded (the file store would take any bytes)
// and leaves the queue with an error naming it and both digests.
func TestChangedFileDropped(t *testing.T) {
	e := newEnv(t)
	logs := &testutil.SyncBuffer{}
	q, err := Open(Options{Dir: e.dir, Store: e.store, Recorder: e.rec, MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond, Logger: testLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	published := changedAfterFirstAttempt(t, e, q)
	checkDropped(t, e, q, e.store)
	sum := sha256.Sum256(published)
	for _, want := range []string{"file changed after it was published", key, hexOf(sum[:])} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log does not say %q:\n%s", want, logs)
		}
	}
}

// s3Store returns a store on a new bucket of a versitygw started for the
// test, with the SDK's credentials taken from the test's environment only.
func s3Store(t *testing.T) backend.Store {
	t.Helper()
	env := testutil.S3Server(t)
	for k, v := range map[string]string{"AWS_ACCESS_KEY_ID": env.AccessKey, "AWS_SECRET_ACCESS_KEY": env.SecretKey,
		"AWS_SESSION_TOKEN": "", "AWS_PROFILE": "", "AWS_EC2_METADATA_DISABLED": "true",
		"AWS_CONFIG_FILE": filepath.Join(t.TempDir(), "none"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(t.TempDir(), "none")} {
		t.Setenv(k, v)
	}
	store, err := s3.New(context.Background(), s3.Config{Bucket: env.NewBucket(t), Endpoint: env.Endpoint, Region: env.Region, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// TestChangedFileDroppedS3: the same against versitygw, where the stale
// digest made every retry fail with XAmzContentSHA256Mismatch, forever.
func TestChangedFileDroppedS3(t *testing.T) {
	store := s3Store(t)
	e := newEnv(t)
	e.store = &flakyStore{Store: store}
	q := e.open(t)
	changedAfterFirstAttempt(t, e, q)
	checkDropped(t, e, q, store)
}

// TestResizedBeforeFirstAttempt: a file whose size changed between its
// publication and the first upload attempt is not uploaded either.
func TestResizedBeforeFirstAttempt(t *testing.T) {
	e := newEnv(t)
	q := e.open(t)
	p := e.file(t, "obj", rnd(1000))
	if err := q.Enqueue(key, p); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("more"))
	f.Close()
	run(t, q)
	if left := drain(t, q, 10*time.Second); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
	checkDropped(t, e, q, e.store)
}

// TestPublishRecordsChunks: the queue records the chunk digests of a large
// object (computed in the pass that hashes it for upload), also when the
// record is made after a restart.
func TestPublishRecordsChunks(t *testing.T) {
	data := rnd(2*index.ChunkSize + 777)
	d := index.NewDigester()
	d.Write(data)
	_, want := d.Sum()
	if len(want) != 3 {
		t.Fatalf("%d chunk digests", len(want))
	}
	e := newEnv(t)
	e.rec.failing = true
	q := e.open(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done }) // also when the test stops early
	if err := q.Enqueue(key, e.file(t, "a", data)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the upload", func() bool { ents := q.Entries(); return len(ents) == 1 && ents[0].State == Uploaded })
	cancel()
	<-done
	e.rec.mu.Lock()
	e.rec.failing = false
	e.rec.mu.Unlock()
	q2 := e.open(t) // the record is made from the entry on disk
	run(t, q2)
	if left := drain(t, q2, 10*time.Second); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
	o, ok := e.rec.get(key)
	if !ok || o.SHA256 != sha256.Sum256(data) || !reflect.DeepEqual(o.Chunks, want) {
		t.Fatalf("recorded %d chunk digests (%v), want the %d of the file", len(o.Chunks), ok, len(want))
	}
	if got, _ := os.ReadFile(filepath.Join(e.storeDir, key)); !bytes.Equal(got, data) {
		t.Fatal("store holds other bytes")
	}
}

func testLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

func hexOf(b []byte) string { return hex.EncodeToString(b) }
