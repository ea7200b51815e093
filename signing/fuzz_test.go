package signing

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// goKey makes an unprotected ed25519 key with go-crypto (no gpg needed) and
// returns its public key file and a SignKey.
func goKey(t testing.TB, name string) (pubFile string, s *SignKey) {
	t.Helper()
	e, err := openpgp.NewEntity(name, "", name+"@example.com", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var pub, sec bytes.Buffer
	if err := e.Serialize(&pub); err != nil {
		t.Fatal(err)
	}
	if err := e.SerializePrivate(&sec, nil); err != nil {
		t.Fatal(err)
	}
	pubFile = filepath.Join(dir, name+".pub")
	secFile := filepath.Join(dir, name+".sec")
	os.WriteFile(pubFile, pub.Bytes(), 0o644)
	os.WriteFile(secFile, sec.Bytes(), 0o600)
	s, err = LoadSigner(secFile, "")
	if err != nil {
		t.Fatal(err)
	}
	return pubFile, s
}

func armorSig(t testing.TB, sig []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, "PGP SIGNATURE", nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(sig)
	w.Close()
	return b.Bytes()
}

// Armored signatures one after the other (as a user may concatenate .asc
// files) count like binary ones.
func TestVerifyConcatenatedArmor(t *testing.T) {
	pa, sa := goKey(t, "a")
	pb, sb := goKey(t, "b")
	kr, err := LoadKeyring(pa, pb)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("object bytes")
	var sig []byte
	for _, s := range []*SignKey{sa, sb} {
		b, err := s.Sign(bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		sig = append(sig, armorSig(t, b)...)
	}
	valid, problems, err := kr.Verify(sig, bytes.NewReader(msg))
	if err != nil || len(problems) != 0 || len(valid) != 2 {
		t.Fatalf("valid %v, problems %v, err %v; want 2 signers", valid, problems, err)
	}
}

var reasons = []error{ErrUnknownKey, ErrBadSignature, ErrSignatureExpired, ErrKeyExpired, ErrKeyRevoked, ErrUnsupported, ErrCorrupt}

// Arbitrary bytes as signatures never panic, never fail the call, never
// count a signer outside the keyring, and every problem has a reason.
func FuzzVerify(f *testing.F) {
	pub, s := goKey(f, "fuzz")
	kr, err := LoadKeyring(pub)
	if err != nil {
		f.Fatal(err)
	}
	msg := []byte("sstate object bytes")
	sig, err := s.Sign(bytes.NewReader(msg))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sig)
	f.Add(append(append([]byte{}, sig...), sig...))
	f.Add(armorSig(f, sig))
	f.Add(sig[:len(sig)/2])
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----\n"))
	f.Add([]byte{0xc2, 0xff, 0xff, 0xff, 0xff, 0x04})
	f.Fuzz(func(t *testing.T, sig []byte) {
		valid, problems, err := kr.Verify(sig, bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		for _, v := range valid {
			if v.Fingerprint != s.Fingerprint() {
				t.Fatalf("signer %v is not in the keyring", v)
			}
		}
		for _, p := range problems {
			known := false
			for _, r := range reasons {
				known = known || errors.Is(p, r)
			}
			if !known {
				t.Fatalf("problem %v has no reason", p)
			}
		}
	})
}

// One keyring and one SignKey serve concurrent callers (the mount verifies
// many objects at once); -race checks it.
func TestConcurrentUse(t *testing.T) {
	pa, sa := goKey(t, "a")
	kr, err := LoadKeyring(pa)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := kr.Lookup(strings.ToLower(sa.KeyID())); !ok || k.Fingerprint != sa.Fingerprint() {
		t.Fatalf("Lookup(%s) = %v %v", sa.KeyID(), k, ok)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := []byte(fmt.Sprintf("object %d", i))
			sig, err := sa.Sign(bytes.NewReader(msg))
			if err != nil {
				errs <- err
				return
			}
			valid, problems, err := kr.Verify(sig, bytes.NewReader(msg))
			if err != nil || len(problems) != 0 || len(valid) != 1 {
				errs <- fmt.Errorf("object %d: %v %v %v", i, valid, problems, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
