package transfer

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/signing"
)

// failingRecorder fails to record the sign-off of one object (fault
// injection: a journal that cannot take a record).
type failingRecorder struct {
	mu     sync.Mutex
	failOn string
	got    []index.Signoff
}

func (r *failingRecorder) Signed(s index.Signoff) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.Key == r.failOn {
		return errors.New("journal unavailable")
	}
	r.got = append(r.got, s)
	return nil
}

// TestSignRecordFailure: a sign-off the journal does not take is a
// failure of its object (the others are signed), and Sign's error says
// so; the recorded sign-offs verify over the objects' bytes.
func TestSignRecordFailure(t *testing.T) {
	g := testutil.NewGPG(t)
	k := g.GenKey(t, "Signer <s@example.com>", "ed25519", "")
	signer, err := signing.LoadSigner(k.Secret, "")
	if err != nil {
		t.Fatal(err)
	}
	kr, err := signing.LoadKeyring(k.Public)
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{objKey(1, "package"): []byte("one"), objKey(2, "package"): []byte("two"), objKey(2, "package") + ".siginfo": []byte("info")}
	src := newSource(t, data, nil, nil)
	rec := &failingRecorder{failOn: objKey(2, "package")}
	res, err := Sign(context.Background(), SignOptions{Store: src.store, Index: src.index(t), Key: signer, Recorder: rec, Selection: Selection{}})
	if err == nil || res.Signed != 1 || len(res.Failed) != 1 || len(rec.got) != 1 {
		t.Fatalf("Sign: %+v, %v; recorded %d", res, err, len(rec.got))
	}
	s := rec.got[0]
	if s.Key != objKey(1, "package") || s.Fingerprint != k.Fingerprint {
		t.Fatalf("sign-off %s by %s", s.Key, s.Fingerprint)
	}
	signers, problems, err := kr.Verify(s.Signature, bytes.NewReader(data[s.Key]))
	if err != nil || len(signers) != 1 || len(problems) != 0 {
		t.Fatalf("the sign-off does not verify: %v %v %v", signers, problems, err)
	}
}

// TestSignVerifyRefuse: Sign refuses a read-only store and a store without
// an index; Verify one without an index.
func TestSignVerifyRefuse(t *testing.T) {
	src := newSource(t, map[string][]byte{objKey(1, "package"): []byte("one")}, nil, nil)
	if _, err := Sign(context.Background(), SignOptions{Store: backend.ReadOnly(src.store), Index: src.index(t)}); !errors.Is(err, backend.ErrReadOnly) {
		t.Errorf("Sign into a read-only store: %v", err)
	}
	if _, err := Sign(context.Background(), SignOptions{Store: src.store}); !errors.Is(err, ErrNoIndex) {
		t.Errorf("Sign without an index: %v", err)
	}
	if _, err := Verify(context.Background(), VerifyOptions{Store: src.store}); !errors.Is(err, ErrNoIndex) {
		t.Errorf("Verify without an index: %v", err)
	}
}
