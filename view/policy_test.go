package view_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/signing"
	"github.com/sstatefs/sstatefs/view"
)

// newKey makes an OpenPGP key (go-crypto: the signing package's tests
// prove gpg interoperability) and writes its public part into dir.
func newKey(t *testing.T, dir, name string) *openpgp.Entity {
	t.Helper()
	e, err := openpgp.NewEntity(name, "", name+"@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	var pub bytes.Buffer
	if err := e.Serialize(&pub); err != nil {
		t.Fatal(err)
	}
	if dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name+".gpg"), pub.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func sign(t *testing.T, e *openpgp.Entity, data string) []byte {
	t.Helper()
	var sig bytes.Buffer
	if err := openpgp.DetachSign(&sig, e, bytes.NewReader([]byte(data)), nil); err != nil {
		t.Fatal(err)
	}
	return sig.Bytes()
}

func upperHex(b []byte) string {
	const digits = "0123456789ABCDEF"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// TestSignaturePolicy: under require_signoffs = 2 an archive is shown only
// with two keyring keys' signatures (its .sig and sign-offs), a key outside
// the keyring does not count, a signature over other bytes hides the
// archive at its first open, and the .sig presented is the keyring keys'
// signatures, which verify over the bytes.
func TestSignaturePolicy(t *testing.T) {
	keys := t.TempDir()
	alice, bob := newKey(t, keys, "alice"), newKey(t, keys, "bob")
	mallory := newKey(t, "", "mallory")
	kr, err := signing.LoadKeyring(keys)
	if err != nil {
		t.Fatal(err)
	}
	good, one, outsider, tampered := key(hash('a')), key(hash('b')), key(hash('c')), key(hash('d'))
	data := map[string]string{good: "good object", one: "one signer", outsider: "outsider", tampered: "tampered object"}
	objects := map[string]string{}
	for k, d := range data {
		objects[k] = d
	}
	// bitbake's .sig (SSTATE_SIG_KEY) by alice beside every archive
	for k, d := range data {
		objects[k+".sig"] = string(sign(t, alice, d))
	}
	st, _ := newStore(t, "signed", objects, nil, true)
	// sign-offs: bob for good, mallory (not in the keyring) for outsider,
	// bob over other bytes for tampered
	ctx := context.Background()
	j := index.NewJournal(st.Store, index.JournalOptions{Writer: "signer"})
	signoff := func(k string, e *openpgp.Entity, signed string) {
		t.Helper()
		if err := j.Signed(ctx, index.Signoff{Key: k, SHA256: sha256.Sum256([]byte(data[k])), Fingerprint: upperHex(e.PrimaryKey.Fingerprint), Signature: sign(t, e, signed)}); err != nil {
			t.Fatal(err)
		}
	}
	signoff(good, bob, data[good])
	signoff(outsider, mallory, data[outsider])
	signoff(tampered, bob, "other bytes")
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Index.LoadOnce(ctx); err != nil {
		t.Fatal(err)
	}
	st.Policy = &view.Policy{Keyring: kr, Require: 2}
	v := newView(t, testutil.NewClock(time.Now()), st)

	for _, k := range []string{one, outsider} {
		if _, err := v.Stat(ctx, k); !errors.Is(err, backend.ErrNotExist) {
			t.Errorf("%s with one keyring signer: %v, want hidden", k, err)
		}
	}
	o, err := v.Stat(ctx, good)
	if err != nil {
		t.Fatalf("archive with two keyring signers: %v", err)
	}
	if got := read(t, v, o); got != data[good] {
		t.Errorf("read %q", got)
	}
	sigObj, err := v.Stat(ctx, good+".sig")
	if err != nil {
		t.Fatalf("presented .sig: %v", err)
	}
	sigs := read(t, v, sigObj)
	signers, problems, err := kr.Verify([]byte(sigs), bytes.NewReader([]byte(data[good])))
	if err != nil || len(problems) > 0 || len(signers) != 2 {
		t.Errorf("presented .sig: %d signers, problems %v, %v; want alice and bob", len(signers), problems, err)
	}
	// the tampered sign-off claims bob: shown at lookup, hidden at open
	o, err = v.Stat(ctx, tampered)
	if err != nil {
		t.Fatalf("lookup of an archive whose signers claim enough: %v", err)
	}
	if _, err := v.Open(ctx, o); !errors.Is(err, view.ErrHidden) {
		t.Errorf("open of an archive with a bad signature: %v, want ErrHidden", err)
	}
	if _, err := v.Stat(ctx, tampered); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("lookup after the failed verification: %v, want hidden", err)
	}
	s := v.StoreStats()[0]
	if s.HiddenUnsigned != 2 || s.HiddenBadSignature != 1 || s.Verified != 1 {
		t.Errorf("counters: %d unsigned, %d bad signature, %d verified; want 2, 1, 1", s.HiddenUnsigned, s.HiddenBadSignature, s.Verified)
	}

	// require 1: one keyring signer is enough, an outsider's is not
	st.Policy = &view.Policy{Keyring: kr, Require: 1}
	v = newView(t, testutil.NewClock(time.Now()), st)
	if _, err := v.Stat(ctx, one); err != nil {
		t.Errorf("require 1, one signer: %v", err)
	}
}
