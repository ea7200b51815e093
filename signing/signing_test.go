package signing

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// keyringDir makes a keyring directory with the public keys of keys,
// alternately armored and binary, plus a dotfile of garbage that
// LoadKeyring must skip.
func keyringDir(t *testing.T, f *gpgFixture, keys ...gpgKey) string {
	t.Helper()
	dir := t.TempDir()
	for i, k := range keys {
		data, err := os.ReadFile(f.export(t, k, false, i%2 == 0))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, k.fpr+".key"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".keys.swp"), []byte("not a key"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func signerFprs(ss []Signer) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Fingerprint)
	}
	slices.Sort(out)
	return out
}

func sorted(s ...string) []string { slices.Sort(s); return s }

// A gpg-made detached signature, made the way OE-core signs sstate with
// SSTATE_SIG_KEY, is accepted; a signature by a signing subkey counts as
// its primary key; armored signatures are accepted too.
func TestVerifyAcceptsGPGSignatures(t *testing.T) {
	f := gpgFix(t)
	kr, err := LoadKeyring(keyringDir(t, f, f.a, f.b))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(kr.Keys()), 2; got != want {
		t.Fatalf("keyring has %d keys, want %d", got, want)
	}
	for _, tc := range []struct {
		name  string
		key   gpgKey
		extra []string
	}{
		{"ed25519 subkey", f.a, nil},
		{"rsa3072", f.b, nil},
		{"rsa3072 armored", f.b, []string{"--armor"}},
		{"ed25519 sha256", f.a, []string{"--digest-algo", "SHA256"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig := f.detachSign(t, tc.key, f.msg, tc.extra...)
			valid, problems, err := kr.Verify(sig, bytes.NewReader(f.msgData))
			if err != nil || len(problems) != 0 {
				t.Fatalf("Verify: %v, problems %v", err, problems)
			}
			if len(valid) != 1 || valid[0].Fingerprint != tc.key.fpr {
				t.Fatalf("signers %+v, want primary %s", valid, tc.key.fpr)
			}
			if want := tc.key.signFpr[len(tc.key.signFpr)-16:]; valid[0].SigningKeyID != want {
				t.Errorf("signing key id %s, want %s", valid[0].SigningKeyID, want)
			}
			if valid[0].KeyID != tc.key.fpr[len(tc.key.fpr)-16:] {
				t.Errorf("key id %s, want the tail of %s", valid[0].KeyID, tc.key.fpr)
			}
			if k, ok := kr.Issuer(sig); !ok || k.Fingerprint != tc.key.fpr {
				t.Errorf("Issuer = %v %v, want %s", k, ok, tc.key.fpr)
			}
			// SSTATE_VALID_SIGS names the key id gpg's GOODSIG prints:
			// the signing subkey's.
			if k, ok := kr.Lookup(tc.key.signFpr[24:]); !ok || k.Fingerprint != tc.key.fpr {
				t.Errorf("Lookup(%s) = %v %v, want %s", tc.key.signFpr[24:], k, ok, tc.key.fpr)
			}
		})
	}
}

// Signatures made by Sign are accepted by gpg --verify as OE-core's
// gpg_sign.py verify() parses it (GOODSIG key ids, which SSTATE_VALID_SIGS
// lists), for every signer of a concatenation; and Verify counts distinct
// primary keys in it.
func TestSignVerifiedByGPG(t *testing.T) {
	f := gpgFix(t)
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pass")
	// A trailing newline, as an editor leaves it: stripped.
	if err := os.WriteFile(passFile, []byte(passA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sa, err := LoadSigner(f.export(t, f.a, true, true), passFile)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := LoadSigner(f.export(t, f.b, true, false), "")
	if err != nil {
		t.Fatal(err)
	}
	if sa.Fingerprint() != f.a.fpr || sb.Fingerprint() != f.b.fpr || sb.KeyID() != f.b.fpr[24:] {
		t.Fatalf("fingerprints %s %s (%s), want %s %s", sa.Fingerprint(), sb.Fingerprint(), sb.KeyID(), f.a.fpr, f.b.fpr)
	}
	var sigs [][]byte
	for _, s := range []*SignKey{sa, sb} {
		sig, err := s.Sign(bytes.NewReader(f.msgData))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(sig, []byte("-----")) {
			t.Fatal("signature is armored, want binary like bitbake's .sig")
		}
		sigs = append(sigs, sig)
	}
	both := append(append([]byte{}, sigs[0]...), sigs[1]...)

	goodsig, validsig, out := gpgVerify(t, f.home, both, f.msg)
	if want := sorted(f.a.signFpr[24:], f.b.fpr[24:]); !slices.Equal(sorted(goodsig...), want) {
		t.Errorf("GOODSIG key ids %v, want %v\n%s", goodsig, want, out)
	}
	if want := sorted(f.a.fpr, f.b.fpr); !slices.Equal(sorted(validsig...), want) {
		t.Errorf("VALIDSIG primary fingerprints %v, want %v\n%s", validsig, want, out)
	}

	// The same key twice (a gpg-made and a Sign-made signature by Alice)
	// is one signer.
	kr, err := LoadKeyring(keyringDir(t, f, f.a, f.b))
	if err != nil {
		t.Fatal(err)
	}
	three := append(append([]byte{}, both...), f.detachSign(t, f.a, f.msg)...)
	valid, problems, err := kr.Verify(three, bytes.NewReader(f.msgData))
	if err != nil || len(problems) != 0 {
		t.Fatalf("Verify: %v, %v", err, problems)
	}
	if got, want := signerFprs(valid), sorted(f.a.fpr, f.b.fpr); !slices.Equal(got, want) {
		t.Fatalf("signers %v, want %v", got, want)
	}

	// The streaming SignWriter makes the same kind of signature.
	w := sb.NewWriter()
	io.Copy(w, bytes.NewReader(f.msgData))
	sig, err := w.Signature()
	if err != nil {
		t.Fatal(err)
	}
	if _, validsig, out := gpgVerify(t, f.home, sig, f.msg); !slices.Equal(validsig, []string{f.b.fpr}) {
		t.Errorf("gpg on a SignWriter signature: %v\n%s", validsig, out)
	}
}

// Every way a signature can fail is reported with its reason, never counts,
// and never stops the good signatures beside it from counting.
func TestVerifyProblems(t *testing.T) {
	f := gpgFix(t)
	kr, err := LoadKeyring(keyringDir(t, f, f.a, f.b, f.e, f.o, f.r))
	if err != nil {
		t.Fatal(err)
	}
	good := f.detachSign(t, f.b, f.msg)
	tampered := append([]byte{}, f.msgData...)
	tampered[len(tampered)/2] ^= 1
	badSigBytes := append([]byte{}, good...)
	badSigBytes[len(badSigBytes)-3] ^= 0x40 // inside the RSA value

	for _, tc := range []struct {
		name string
		sig  []byte
		data []byte
		want error
		at   time.Time // if set, the signature is valid at this time
	}{
		{"other bytes", f.detachSign(t, f.a, f.msg), tampered, ErrBadSignature, time.Time{}},
		{"tampered signature", badSigBytes, f.msgData, ErrBadSignature, time.Time{}},
		{"truncated signature", good[:len(good)-10], f.msgData, ErrCorrupt, time.Time{}},
		{"not a signature", []byte("this is not OpenPGP at all"), f.msgData, ErrCorrupt, time.Time{}},
		{"key not in keyring", f.detachSign(t, f.c, f.msg), f.msgData, ErrUnknownKey, time.Time{}},
		{"expired key", f.sigE, f.msgData, ErrKeyExpired, pastTime.Add(13 * time.Hour)},
		{"expired signature", f.sigO, f.msgData, ErrSignatureExpired, pastTime.Add(13 * time.Hour)},
		{"revoked key", f.sigR, f.msgData, ErrKeyRevoked, time.Time{}},
		{"sha1", f.detachSign(t, f.b, f.msg, "--digest-algo", "SHA1"), f.msgData, ErrUnsupported, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			valid, problems, err := kr.Verify(tc.sig, bytes.NewReader(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if len(valid) != 0 || len(problems) != 1 || !errors.Is(problems[0], tc.want) {
				t.Fatalf("valid %v, problems %v; want one problem %v", valid, problems, tc.want)
			}
			// Next to a good signature: the good one still counts, the bad
			// one is still reported, at its position.
			both := append(append([]byte{}, good...), tc.sig...)
			data := tc.data
			if !bytes.Equal(data, f.msgData) {
				data = f.msgData // the good one is over the real bytes; the bad one over other bytes is tested above
				both = append(append([]byte{}, good...), f.detachSign(t, f.a, writeTemp(t, tc.data))...)
			}
			valid, problems, err = kr.Verify(both, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if len(valid) != 1 || valid[0].Fingerprint != f.b.fpr || len(problems) != 1 || !errors.Is(problems[0], tc.want) || problems[0].Index != 1 {
				t.Fatalf("with a good signature: valid %v, problems %v", valid, problems)
			}
			if !tc.at.IsZero() {
				valid, problems, _ := kr.Verify(tc.sig, bytes.NewReader(tc.data), At(tc.at))
				if len(valid) != 1 || len(problems) != 0 {
					t.Fatalf("at %v: valid %v, problems %v; want valid", tc.at, valid, problems)
				}
			}
		})
	}
}

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Verify reads the signed bytes once whatever the number of signatures;
// Prepare/Check gives the same answer to a caller streaming the bytes
// through its own reader (here: a SHA-256, as the mount checks).
func TestVerifyReadsOnceAndStreams(t *testing.T) {
	f := gpgFix(t)
	kr, err := LoadKeyring(keyringDir(t, f, f.a, f.b))
	if err != nil {
		t.Fatal(err)
	}
	var sig []byte
	for _, k := range []gpgKey{f.a, f.b, f.a, f.b} {
		sig = append(sig, f.detachSign(t, k, f.msg)...)
	}
	cr := &countingReader{r: bytes.NewReader(f.msgData)}
	valid, problems, err := kr.Verify(sig, cr)
	if err != nil || len(problems) != 0 || len(valid) != 2 {
		t.Fatalf("Verify: %v %v %v", valid, problems, err)
	}
	if cr.n != len(f.msgData) {
		t.Fatalf("read %d bytes, want %d (once)", cr.n, len(f.msgData))
	}

	c := kr.Prepare(sig)
	if !c.Hashing() {
		t.Fatal("Hashing() = false with signatures to check")
	}
	h := sha256.New()
	// Small writes, as FUSE reads arrive.
	r := io.TeeReader(bytes.NewReader(f.msgData), h)
	buf := make([]byte, 4093)
	for {
		n, err := r.Read(buf)
		c.Write(buf[:n])
		if err == io.EOF {
			break
		}
	}
	valid2, problems2 := c.Result()
	if len(problems2) != 0 || !slices.Equal(signerFprs(valid2), signerFprs(valid)) {
		t.Fatalf("Check: %v %v, want %v", valid2, problems2, valid)
	}
	if want := sha256.Sum256(f.msgData); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("digest differs")
	}
	// Nothing to hash: only unknown keys.
	if kr.Prepare(f.detachSign(t, f.c, f.msg)).Hashing() {
		t.Fatal("Hashing() = true with only unknown issuers")
	}
}

func TestLoadKeyringErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.asc")
	os.WriteFile(garbage, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64!!\n-----END PGP PUBLIC KEY BLOCK-----\n"), 0o644)
	binGarbage := filepath.Join(dir, "garbage.gpg")
	os.WriteFile(binGarbage, []byte{0x99, 0x01, 0x0d, 4, 1, 2, 3}, 0o644)
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, ".hidden"), []byte("x"), 0o644)

	for _, tc := range []struct {
		name  string
		paths []string
		want  error
		names string
	}{
		{"armored garbage", []string{garbage}, ErrBadKeyFile, garbage},
		{"binary garbage", []string{binGarbage}, ErrBadKeyFile, binGarbage},
		{"directory with garbage", []string{dir}, ErrBadKeyFile, "garbage."},
		{"empty directory", []string{empty}, ErrEmptyKeyring, empty},
		{"missing", []string{filepath.Join(dir, "nope")}, os.ErrNotExist, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadKeyring(tc.paths...)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("err = %v, want %v naming %s", err, tc.want, tc.names)
			}
		})
	}
}

func TestLoadKeyringRefusesSecretKeys(t *testing.T) {
	f := gpgFix(t)
	p := f.export(t, f.b, true, true)
	if _, err := LoadKeyring(p); !errors.Is(err, ErrSecretInKeyring) || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want ErrSecretInKeyring naming %s", err, p)
	}
}

func TestLoadSignerErrors(t *testing.T) {
	f := gpgFix(t)
	dir := t.TempDir()
	wrong := filepath.Join(dir, "wrong")
	os.WriteFile(wrong, []byte("not the passphrase\n"), 0o600)
	for _, tc := range []struct {
		name     string
		key      string
		pass     string
		want     error
		fpr      string
		at       time.Time
		notInErr []string
	}{
		{"wrong passphrase", f.export(t, f.a, true, false), wrong, ErrWrongPassphrase, f.a.fpr, time.Time{}, []string{"not the passphrase", passA}},
		{"no passphrase", f.export(t, f.a, true, true), "", ErrPassphraseNeeded, f.a.fpr, time.Time{}, nil},
		{"public key only", f.export(t, f.a, false, true), "", ErrNoSecretKey, "", time.Time{}, nil},
		{"expired key", f.export(t, f.e, true, true), "", ErrKeyExpired, f.e.fpr, time.Time{}, nil},
		{"revoked key", f.export(t, f.r, true, true), "", ErrKeyRevoked, f.r.fpr, time.Time{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadSigner(tc.key, tc.pass)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.fpr) {
				t.Fatalf("err = %v, want %v naming %s and %q", err, tc.want, tc.key, tc.fpr)
			}
			for _, s := range tc.notInErr {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("error %q contains the secret %q", err, s)
				}
			}
		})
	}
	// The expired key could sign in its time.
	s, err := LoadSigner(f.export(t, f.e, true, true), "", At(pastTime.Add(time.Hour)))
	if err != nil {
		t.Fatalf("expired key at a time it was valid: %v", err)
	}
	if _, err := s.Sign(bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
}
