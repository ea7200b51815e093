package publish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/signing"
)

// signRecorder is a recorder that also takes sign-offs.
type signRecorder struct {
	recorder
	smu     sync.Mutex
	sigs    []index.Signoff
	sfailed bool
}

func (r *signRecorder) Signed(ctx context.Context, s index.Signoff) error {
	r.smu.Lock()
	defer r.smu.Unlock()
	if r.sfailed {
		return errors.New("journal unavailable")
	}
	r.sigs = append(r.sigs, s)
	return nil
}

func (r *signRecorder) signoffs() []index.Signoff {
	r.smu.Lock()
	defer r.smu.Unlock()
	return append([]index.Signoff(nil), r.sigs...)
}

// signer makes a key with real gpg and loads it as a mount does.
func signer(t *testing.T) (*signing.SignKey, *signing.Keyring) {
	t.Helper()
	g := testutil.NewGPGHome(t)
	k := g.GenKey(t, t.TempDir(), "Builder <b@example.com>", "secret words")
	sk, err := signing.LoadSigner(k.Secret, k.PassFile)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := signing.LoadKeyring(k.Public)
	if err != nil {
		t.Fatal(err)
	}
	return sk, kr
}

func (e *env) openSigning(t *testing.T, rec Recorder, sk *signing.SignKey) *Queue {
	t.Helper()
	q, err := Open(Options{Dir: e.dir, Store: e.store, Recorder: rec, Signer: sk, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// wantSignoff fails unless sigs is one sign-off of key over data, by sk,
// whose signature verifies.
func wantSignoff(t *testing.T, sigs []index.Signoff, sk *signing.SignKey, kr *signing.Keyring, data []byte) {
	t.Helper()
	if len(sigs) != 1 {
		t.Fatalf("%d sign-offs recorded, want 1: %+v", len(sigs), sigs)
	}
	s := sigs[0]
	if s.Key != key || s.SHA256 != sha256.Sum256(data) || s.Fingerprint != sk.Fingerprint() {
		t.Fatalf("sign-off of %s by %s, want %s by %s over the published bytes", s.Key, s.Fingerprint, key, sk.Fingerprint())
	}
	signers, problems, err := kr.Verify(s.Signature, bytes.NewReader(data))
	if err != nil || len(problems) > 0 || len(signers) != 1 {
		t.Fatalf("signature of the sign-off: %v signers, problems %v, %v", signers, problems, err)
	}
}

// TestQueueSignsOff: a queue with a signing key signs off the archive it
// creates in the store, and an identical one another builder put there
// first; not the siginfo, not other bytes under the name.
func TestQueueSignsOff(t *testing.T) {
	sk, kr := signer(t)
	data := rnd(70_000)
	for _, tc := range []struct {
		name  string
		there []byte // in the store before
		signs bool
	}{
		{"created", nil, true},
		{"already there", data, true},
		{"conflict", rnd(70_000), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.there != nil {
				if err := e.store.Create(context.Background(), key, bytes.NewReader(tc.there), int64(len(tc.there))); err != nil {
					t.Fatal(err)
				}
			}
			rec := &signRecorder{}
			q := e.openSigning(t, rec, sk)
			run(t, q)
			if err := q.Enqueue(key, e.file(t, "a", data)); err != nil {
				t.Fatal(err)
			}
			if err := q.Enqueue(key+".siginfo", e.file(t, "b", []byte("siginfo"))); err != nil {
				t.Fatal(err)
			}
			if left := drain(t, q, 20*time.Second); len(left) != 0 {
				t.Fatalf("left: %+v", left)
			}
			if !tc.signs {
				if sigs := rec.signoffs(); len(sigs) != 0 {
					t.Fatalf("other bytes under the name signed off: %+v", sigs)
				}
				return
			}
			wantSignoff(t, rec.signoffs(), sk, kr, data)
			if st := q.Stats(); st.Signed != 1 {
				t.Errorf("stats: %+v, want 1 signed", st)
			}
		})
	}
}

// TestQueueSignoffAfterRestart: killed after the upload, before the
// records, the queue records the object and its sign-off at the next
// start from the entry on disk, without uploading or hashing again.
func TestQueueSignoffAfterRestart(t *testing.T) {
	sk, kr := signer(t)
	e := newEnv(t)
	rec := &signRecorder{}
	rec.failing, rec.sfailed = true, true
	q := e.openSigning(t, rec, sk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	data := rnd(5000)
	if err := q.Enqueue(key, e.file(t, "a", data)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the upload", func() bool { ents := q.Entries(); return len(ents) == 1 && ents[0].State == Uploaded })
	cancel()
	<-done
	creates := e.store.creates.Load()
	rec2 := &signRecorder{}
	q2 := e.openSigning(t, rec2, nil) // the key may be gone: the entry holds the signature
	run(t, q2)
	if left := drain(t, q2, 20*time.Second); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
	if e.store.creates.Load() != creates {
		t.Errorf("uploaded again after restart")
	}
	if _, ok := rec2.get(key); !ok {
		t.Fatal("object never recorded")
	}
	wantSignoff(t, rec2.signoffs(), sk, kr, data)
}

// TestQueueSignerNeedsSignoffRecorder: a signing key with a recorder that
// cannot record sign-offs is refused at Open, not ignored.
func TestQueueSignerNeedsSignoffRecorder(t *testing.T) {
	sk, _ := signer(t)
	e := newEnv(t)
	if _, err := Open(Options{Dir: e.dir, Store: e.store, Recorder: e.rec, Signer: sk}); err == nil {
		t.Fatal("Open accepted a signing key without a sign-off recorder")
	}
}
