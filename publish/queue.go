// Package publish owns the upload rules and the durable local upload queue.
// The rules (Put: conditional create, compare with the store's object on a
// conflict, record in the index with the store's mtime) serve every upload:
// the queue's and push's (package transfer). Objects bitbake has published
// through the mount wait in the queue, on disk, until they are in the store
// and recorded in the index journal. The queue survives a crash or a kill:
// on the next start it resumes where it stopped.
//
// On disk, under Dir:
//
//	data/<id>.<gen>  a hard link to (or a copy of) the published file
//	entries/<id>     the entry, JSON, replaced atomically on every change
//
// where id is derived from the object's key, so one key has one entry; a
// key published again (rename over it) gets a new generation of data.
//
// The order of events for an entry is: enqueued → uploaded (conditional
// create: the object appears whole, an existing object is never replaced) →
// recorded in the journal → removed from the queue. The index thus learns of
// an object only after it is in the store, and nothing acknowledged is lost.
//
// The queued file is a hard link to the one bitbake published, so it can
// still be changed through its other name. The digest of the first upload
// attempt is recorded in the entry, and every attempt hashes the file again
// right before uploading it: bytes that differ from the record (or a size
// that differs from the one published) are never uploaded under the name;
// the entry is dropped with an error saying so (ErrChanged).
package publish

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/signing"
	"github.com/sstatefs/sstatefs/sstate"
)

// Recorder records uploaded objects in the index journal. Added returns
// only once the record is durable in the store (index.Journal), or, for a
// Recorder that is also a Flusher, possibly before (index.Later).
type Recorder interface {
	Added(ctx context.Context, o index.Object) error
}

// Flusher is a Recorder that holds records back to write them in batches
// (index.Later): Flush writes what it holds and returns once that is in
// the store. Push flushes its recorder before it returns.
type Flusher interface {
	Flush(ctx context.Context) error
}

// Hurrier is a Recorder whose records wait for a window to share a
// segment (index.Journal's group commit): from Hurry until the returned
// function is called, they do not. Drain hurries its recorder, so that
// the records of the last uploads are written as they come.
type Hurrier interface {
	Hurry() (done func())
}

// SignoffRecorder is a Recorder that also records sign-offs
// (index.Journal): the queue of a mount with a signing key needs one.
type SignoffRecorder interface {
	Signed(ctx context.Context, s index.Signoff) error
}

// Options configure a Queue.
type Options struct {
	Dir      string
	Store    backend.Store
	Recorder Recorder
	// Signer, when set, signs every sstate archive the queue puts into the
	// store or finds there with the same bytes (a rebuilder's sign-off);
	// Recorder must then be a SignoffRecorder.
	Signer      *signing.SignKey
	Concurrency int           // uploads at once, default DefaultConcurrency
	MinBackoff  time.Duration // first retry delay, default 1s
	MaxBackoff  time.Duration // longest retry delay, default 2m
	Logger      *slog.Logger
	Now         func() time.Time
}

// State of an entry.
type State string

const (
	Pending  State = "pending"  // waiting for (another) upload attempt
	Uploaded State = "uploaded" // in the store, not yet in the journal
)

// Entry is one queued object.
type Entry struct {
	Key    string `json:"key"`
	Data   string `json:"data"` // file name under data/
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"` // hex, recorded at the first upload attempt
	// Chunks are the hex digests of the file's index.ChunkSize pieces,
	// recorded with SHA256 (files larger than a chunk only).
	Chunks    []string  `json:"chunks,omitempty"`
	ModTime   time.Time `json:"mtime"`
	State     State     `json:"state"`
	Enqueued  time.Time `json:"enqueued"`
	Attempts  int       `json:"attempts"`
	LastError string    `json:"last_error,omitempty"`
	NextTry   time.Time `json:"next_try,omitempty"`
	// Signature is the Signer's detached signature over the bytes of
	// SHA256, made in the pass that hashed them, by the key of Signer
	// (fingerprint): recorded as a sign-off once the object is in the
	// store, also after a restart in state Uploaded.
	Signature []byte `json:"signature,omitempty"`
	Signer    string `json:"signer,omitempty"`
}

// Stats are counters since the queue was opened. Changed counts entries
// dropped because their file changed after publication (ErrChanged);
// Signed the sign-offs recorded, SignFailures the archives published
// without one because signing failed.
type Stats struct {
	Uploaded, UploadedBytes, Existing, Conflicts, Failures, Changed int64
	Signed, SignFailures                                            int64
}

// Queue is the upload queue. Safe for concurrent use.
type Queue struct {
	dir    string
	store  backend.Store
	rec    Recorder
	signer *signing.SignKey
	conc   int
	minB   time.Duration
	maxB   time.Duration
	log    *slog.Logger
	now    func() time.Time
	wake   chan struct{}

	mu       sync.Mutex // protects entries, busy, stats, idle
	entries  map[string]*Entry
	busy     map[string]bool // keys being worked on
	stats    Stats
	idle     *sync.Cond // broadcast when an entry leaves the queue
	readOnly bool
}

// ErrReadOnly is returned by Enqueue when the store does not take writes.
var ErrReadOnly = errors.New("store is read-only: object kept locally, not published")

// ErrChanged: a queued file no longer has the content it had when it was
// published (changed through its other hard link). It is not uploaded: the
// name stands for what bitbake published, not for later bytes.
var ErrChanged = errors.New("file changed after it was published")

// DefaultConcurrency is how many uploads run at once unless configured
// (the configuration's default is this one).
const DefaultConcurrency = 8

// Open opens the queue in opt.Dir and loads what an earlier process left.
func Open(opt Options) (*Queue, error) {
	if opt.Concurrency <= 0 {
		opt.Concurrency = DefaultConcurrency
	}
	if opt.MinBackoff <= 0 {
		opt.MinBackoff = time.Second
	}
	if opt.MaxBackoff <= 0 {
		opt.MaxBackoff = 2 * time.Minute
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if _, ok := opt.Recorder.(SignoffRecorder); opt.Signer != nil && !ok {
		return nil, errors.New("upload queue: a signing key needs a recorder of sign-offs")
	}
	q := &Queue{
		dir: opt.Dir, store: opt.Store, rec: opt.Recorder, signer: opt.Signer, conc: opt.Concurrency,
		minB: opt.MinBackoff, maxB: opt.MaxBackoff, log: opt.Logger, now: opt.Now,
		wake: make(chan struct{}, 1), entries: map[string]*Entry{}, busy: map[string]bool{},
	}
	q.idle = sync.NewCond(&q.mu)
	for _, d := range []string{"data", "entries", "tmp"} {
		if err := os.MkdirAll(filepath.Join(q.dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("upload queue: %w", err)
		}
	}
	// what a crash left half-written (the mount holding the cache
	// directory's lock is the queue's only user)
	if tmps, err := os.ReadDir(filepath.Join(q.dir, "tmp")); err == nil {
		for _, de := range tmps {
			os.Remove(filepath.Join(q.dir, "tmp", de.Name()))
		}
	}
	ents, err := os.ReadDir(filepath.Join(q.dir, "entries"))
	if err != nil {
		return nil, fmt.Errorf("upload queue: %w", err)
	}
	for _, de := range ents {
		p := filepath.Join(q.dir, "entries", de.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("upload queue: %w", err)
		}
		var e Entry
		if err := json.Unmarshal(b, &e); err != nil || e.Key == "" || idFor(e.Key) != de.Name() {
			// A torn or foreign file: keep it aside for a human, do not guess.
			q.log.Error("upload queue: unreadable entry moved aside", "file", p, "error", err)
			os.Rename(p, p+".bad")
			continue
		}
		if _, err := os.Stat(q.dataPath(e.Data)); e.Data == "" || err != nil {
			q.log.Error("upload queue: entry without data, dropped", "object", e.Key, "error", err)
			os.Remove(p)
			continue
		}
		e.NextTry = time.Time{} // retry at once after a restart
		q.entries[e.Key] = &e
	}
	if len(q.entries) > 0 {
		q.log.Info("upload queue resumed", "objects", len(q.entries))
	}
	return q, nil
}

func idFor(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:16])
}

func (q *Queue) dataPath(name string) string {
	return filepath.Join(q.dir, "data", filepath.Base(name))
}
func (q *Queue) entryPath(key string) string { return filepath.Join(q.dir, "entries", idFor(key)) }

// Dir is the queue's directory.
func (q *Queue) Dir() string { return q.dir }

// SetReadOnly makes Enqueue refuse: the store does not take writes.
func (q *Queue) SetReadOnly(ro bool) {
	q.mu.Lock()
	q.readOnly = ro
	q.mu.Unlock()
}

// Enqueue queues the file at path for upload under key. The file is hard
// linked into the queue (copied where linking fails), so later changes to
// the name do not affect what is uploaded. It returns once the entry is on
// disk.
func (q *Queue) Enqueue(key, path string) error {
	if err := backend.CheckKey(key); err != nil {
		return err
	}
	q.mu.Lock()
	ro := q.readOnly
	q.mu.Unlock()
	if ro {
		return ErrReadOnly
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("enqueue %s: %w", key, err)
	}
	name := fmt.Sprintf("%s.%x", idFor(key), rand.Uint64())
	data := q.dataPath(name)
	tmp := filepath.Join(q.dir, "tmp", name)
	if err := os.Link(path, tmp); err != nil {
		if err := copyFile(path, tmp); err != nil {
			return fmt.Errorf("enqueue %s: %w", key, err)
		}
	}
	if err := os.Rename(tmp, data); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("enqueue %s: %w", key, err)
	}
	e := &Entry{Key: key, Data: name, Size: fi.Size(), ModTime: fi.ModTime(), State: Pending, Enqueued: q.now()}
	// the entry is written outside the lock; only its rename into place
	// is serialised with the other changes of the queue
	tmpEntry, err := q.writeEntry(e)
	if err != nil {
		os.Remove(data)
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.placeEntry(tmpEntry, e); err != nil {
		os.Remove(data)
		return err
	}
	if old, ok := q.entries[key]; ok && !q.busy[key] {
		os.Remove(q.dataPath(old.Data))
	}
	q.entries[key] = e
	q.kick()
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

// saveLocked writes the entry atomically.
func (q *Queue) saveLocked(e *Entry) error {
	tmp, err := q.writeEntry(e)
	if err != nil {
		return err
	}
	return q.placeEntry(tmp, e)
}

// writeEntry writes e to a new temp file (no lock needed) and returns its
// path, for placeEntry.
func (q *Queue) writeEntry(e *Entry) (string, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return "", err
	}
	tmp := filepath.Join(q.dir, "tmp", fmt.Sprintf("%s.%x.json", idFor(e.Key), rand.Uint64()))
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("upload queue: %w", err)
	}
	return tmp, nil
}

// placeEntry renames an entry written by writeEntry into place (with q.mu
// held, so that entries of one key replace each other in order).
func (q *Queue) placeEntry(tmp string, e *Entry) error {
	if err := os.Rename(tmp, q.entryPath(e.Key)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("upload queue: %w", err)
	}
	return nil
}

func (q *Queue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Run uploads queued objects with bounded concurrency until ctx ends.
func (q *Queue) Run(ctx context.Context) {
	sem := make(chan struct{}, q.conc)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := q.dispatch(ctx, sem, &wg)
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		case <-timer.C:
		}
	}
}

// dispatch starts work on every due entry that a free slot allows and
// returns how long to wait before looking again.
func (q *Queue) dispatch(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup) time.Duration {
	q.mu.Lock()
	now := q.now()
	wait := time.Hour
	var due []*Entry
	for _, e := range q.entries {
		if q.busy[e.Key] {
			continue
		}
		if d := e.NextTry.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		due = append(due, e)
	}
	sort.Slice(due, func(i, j int) bool { return due[i].Enqueued.Before(due[j].Enqueued) })
	var started []Entry
slots:
	for _, e := range due {
		select {
		case sem <- struct{}{}:
		default:
			// no free slot: a finishing worker kicks the loop again
			break slots
		}
		q.busy[e.Key] = true
		started = append(started, *e)
	}
	q.mu.Unlock()
	for _, e := range started {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer q.kick()
			// The upload slot is given back once the bytes are in the
			// store: waiting for the journal's group commit (up to its
			// window) must not keep the next upload from starting. The
			// entry stays on disk, in state Uploaded, until the record is
			// in the store.
			release := sync.OnceFunc(func() { <-sem })
			defer release()
			q.work(ctx, e, release)
		}()
	}
	return wait
}

// work moves one entry on as far as it can; release gives the upload slot
// back.
func (q *Queue) work(ctx context.Context, e Entry, release func()) {
	q.log.Debug("upload starting", "object", e.Key, "state", e.State, "attempts", e.Attempts)
	uploaded := func() {
		release()
		q.kick() // a slot is free: the next upload starts now, not when this record is written
	}
	err := q.advance(ctx, &e, uploaded)
	q.log.Debug("upload finished", "object", e.Key, "error", err)
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.busy, e.Key)
	cur, ok := q.entries[e.Key]
	if ok && cur.Data != e.Data {
		// Published again while this generation was uploading: the new
		// one is the entry now; this one is finished either way.
		os.Remove(q.dataPath(e.Data))
		return
	}
	if errors.Is(err, ErrChanged) {
		q.stats.Changed++
		q.log.Error("not published: the file changed after bitbake published it; dropped from the upload queue", "object", e.Key, "error", err)
	}
	if err == nil || errors.Is(err, ErrChanged) {
		delete(q.entries, e.Key)
		os.Remove(q.entryPath(e.Key))
		os.Remove(q.dataPath(e.Data))
		q.idle.Broadcast()
		return
	}
	if ctx.Err() != nil {
		return // shutting down: the entry stays for the next start
	}
	e.Attempts++
	e.LastError = err.Error()
	e.NextTry = q.now().Add(q.backoff(e.Attempts))
	q.stats.Failures++
	q.log.Warn("upload failed, will retry", "object", e.Key, "attempt", e.Attempts, "retry_in", e.NextTry.Sub(q.now()).Round(time.Second), "error", err)
	if ok {
		*cur = e
		if serr := q.saveLocked(cur); serr != nil {
			q.log.Error("upload queue: saving entry", "object", e.Key, "error", serr)
		}
	}
}

func (q *Queue) backoff(attempts int) time.Duration {
	d := q.minB << min(attempts-1, 20)
	if d > q.maxB || d <= 0 {
		d = q.maxB
	}
	// jitter: 75%..125%, so many mounts do not retry in step
	return time.Duration(float64(d) * (0.75 + rand.Float64()/2))
}

// advance does the next steps of an entry: hash, upload, record (Put); it
// calls uploaded once the object is in the store.
func (q *Queue) advance(ctx context.Context, e *Entry, uploaded func()) error {
	if e.State == Uploaded {
		// in the store already (an earlier attempt, or before a restart)
		uploaded()
		sum, err := hex.DecodeString(e.SHA256)
		if err != nil || len(sum) != 32 {
			return fmt.Errorf("entry %s: bad sha256 %q", e.Key, e.SHA256)
		}
		wait := q.signoff(ctx, e, [32]byte(sum))
		err = record(ctx, q.store, q.rec, e.Key, [32]byte(sum), decodeChunks(e.Chunks, e.Size))
		return wait(err)
	}
	f, err := os.Open(q.dataPath(e.Data))
	if err != nil {
		return err
	}
	defer f.Close()
	t0 := time.Now()
	sum, chunks, err := q.check(e, f)
	if err != nil {
		return err
	}
	signed := func(err error) error { return err }
	out, err := Put(ctx, q.store, q.rec, Upload{Key: e.Key, Data: f, Size: e.Size, SHA256: sum, Chunks: chunks}, func(out Outcome) {
		switch out {
		case Created:
			q.count(func(s *Stats) { s.Uploaded++; s.UploadedBytes += e.Size })
			// took: hashing and uploading; queued: since bitbake published it
			q.log.Info("published", "object", e.Key, "bytes", e.Size, "took", time.Since(t0).Round(time.Millisecond), "queued", q.now().Sub(e.Enqueued).Round(time.Millisecond))
		case AlreadyThere:
			q.count(func(s *Stats) { s.Existing++ })
		}
		e.State = Uploaded
		q.update(e)
		uploaded()
		// the object is in the store with our bytes: the sign-off may be
		// recorded, in the batch of the object's record
		signed = q.signoff(ctx, e, sum)
	})
	err = signed(err)
	if out == Conflict {
		// Another builder published other bytes under this name (different
		// PR service, say). Ours stays local; the index keeps the store's
		// object.
		q.count(func(s *Stats) { s.Conflicts++ })
		q.log.Warn("not published: the store has other content under this name (first writer wins)", "object", e.Key)
	}
	return err
}

// signoff starts recording e's sign-off over the bytes of digest sum,
// when e has one, alongside the object's record (so that both share a
// segment); the returned function waits for it and adds its failure to
// the record's (the entry is then retried: a record written twice does no
// harm).
func (q *Queue) signoff(ctx context.Context, e *Entry, sum [32]byte) func(error) error {
	if len(e.Signature) == 0 {
		return func(err error) error { return err }
	}
	sr, ok := q.rec.(SignoffRecorder)
	if !ok {
		return func(err error) error { return err }
	}
	s := index.Signoff{Key: e.Key, SHA256: sum, Fingerprint: e.Signer, Signature: e.Signature}
	done := make(chan error, 1)
	go func() { done <- sr.Signed(ctx, s) }()
	return func(err error) error {
		serr := <-done
		if serr != nil {
			if err == nil {
				err = fmt.Errorf("recording the sign-off by %s: %w", s.Fingerprint, serr)
			}
			return err
		}
		if err == nil {
			q.count(func(st *Stats) { st.Signed++ })
			q.log.Debug("signed off", "object", e.Key, "signer", s.Fingerprint)
		}
		return err
	}
}

// signs reports whether the queue signs key: an sstate archive (not its
// .siginfo or .sig), as a store's signature policy applies to archives.
func (q *Queue) signs(key string) bool {
	if q.signer == nil {
		return false
	}
	n, err := sstate.Parse(key)
	return err == nil && n.Companion == ""
}

// check hashes the queued file in one pass (its digest and chunk digests)
// right before an upload, and signs the same bytes when the queue signs
// it. The first time, it records them in the entry (on disk, so that a
// restart compares with them too); later, it compares. Bytes or a size
// other than those published give ErrChanged.
func (q *Queue) check(e *Entry, f *os.File) ([32]byte, [][32]byte, error) {
	var r io.Reader = f
	var sw *signing.SignWriter
	if q.signs(e.Key) {
		sw = q.signer.NewWriter()
		r = io.TeeReader(f, sw)
	}
	sum, chunks, n, err := index.Digest(r)
	if err != nil {
		return sum, nil, err
	}
	defer func() {
		// only bytes of the recorded digest are signed
		if sw != nil && e.SHA256 == hex.EncodeToString(sum[:]) && n == e.Size {
			q.sign(e, sw)
		}
	}()
	got := hex.EncodeToString(sum[:])
	switch {
	case n != e.Size:
		was := "not hashed yet"
		if e.SHA256 != "" {
			was = e.SHA256 + " when first hashed for upload"
		}
		return sum, nil, fmt.Errorf("%s: %w: %d bytes, %d when published (sha256 now %s, %s)", e.Key, ErrChanged, n, e.Size, got, was)
	case e.SHA256 == "":
		e.SHA256 = got
		e.Chunks = make([]string, len(chunks))
		for k := range chunks {
			e.Chunks[k] = hex.EncodeToString(chunks[k][:])
		}
		q.update(e)
	case got != e.SHA256:
		return sum, nil, fmt.Errorf("%s: %w: sha256 %s, %s when first hashed for upload", e.Key, ErrChanged, got, e.SHA256)
	}
	return sum, chunks, nil
}

// decodeChunks returns the chunk digests of an entry, nil if it has none
// or they do not fit its size (an entry of an older sstatefs).
func decodeChunks(hexes []string, size int64) [][32]byte {
	if len(hexes) == 0 || len(hexes) != index.NumChunks(size) {
		return nil
	}
	out := make([][32]byte, len(hexes))
	for k, h := range hexes {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			return nil
		}
		out[k] = [32]byte(b)
	}
	return out
}

// sign puts the signature over the bytes sw hashed into e; a failure
// leaves e without one (published, not signed off) and is logged.
func (q *Queue) sign(e *Entry, sw *signing.SignWriter) {
	sig, err := sw.Signature()
	if err != nil {
		q.count(func(st *Stats) { st.SignFailures++ })
		q.log.Error("published without a sign-off: signing failed", "object", e.Key, "error", err)
		e.Signature, e.Signer = nil, ""
		return
	}
	e.Signature, e.Signer = sig, q.signer.Fingerprint()
}

func (q *Queue) update(e *Entry) {
	tmp, err := q.writeEntry(e)
	q.mu.Lock()
	defer q.mu.Unlock()
	if cur, ok := q.entries[e.Key]; ok && cur.Data == e.Data {
		*cur = *e
		if err == nil {
			err = q.placeEntry(tmp, cur)
		}
		if err != nil {
			q.log.Error("upload queue: saving entry", "object", e.Key, "error", err)
		}
		return
	}
	if err == nil {
		os.Remove(tmp) // a newer generation replaced this one
	}
}

func (q *Queue) count(f func(*Stats)) {
	q.mu.Lock()
	f(&q.stats)
	q.mu.Unlock()
}

// Entries returns the queued entries, oldest first.
func (q *Queue) Entries() []Entry {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Entry, 0, len(q.entries))
	for _, e := range q.entries {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Enqueued.Before(out[j].Enqueued) })
	return out
}

// Stats returns counters since Open.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stats
}

// Len is the number of queued entries.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.entries)
}

// Drain retries every entry at once and waits until the queue is empty or
// ctx ends; it returns what is left. Run must be running. A Recorder that
// is a Hurrier is hurried meanwhile: the records of the uploaded objects
// (those waiting already and those to come) do not wait for the end of
// the journal's window.
func (q *Queue) Drain(ctx context.Context) []Entry {
	if h, ok := q.rec.(Hurrier); ok {
		defer h.Hurry()()
	}
	q.mu.Lock()
	for _, e := range q.entries {
		e.NextTry = time.Time{}
	}
	q.mu.Unlock()
	q.kick()
	done := make(chan struct{})
	go func() {
		q.mu.Lock()
		for len(q.entries) > 0 && ctx.Err() == nil {
			q.idle.Wait()
		}
		q.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		q.mu.Lock()
		q.idle.Broadcast() // release the waiter
		q.mu.Unlock()
		<-done
	}
	return q.Entries()
}

// ReadEntries reads the queue of a cache directory from disk, for status
// reports from another process.
func ReadEntries(dir string) ([]Entry, error) {
	ents, err := os.ReadDir(filepath.Join(dir, "entries"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, de := range ents {
		b, err := os.ReadFile(filepath.Join(dir, "entries", de.Name()))
		if err != nil {
			continue // removed meanwhile
		}
		var e Entry
		if json.Unmarshal(b, &e) == nil {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Enqueued.Before(out[j].Enqueued) })
	return out, nil
}
