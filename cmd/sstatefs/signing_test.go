package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// signedStore is an S3 store (versitygw) whose configuration trusts the
// keys A and B, with gpg to make and check signatures the way users and
// bitbake do.
type signedStore struct {
	cfg     config.Config
	gpg     *testutil.GPGHome
	a, b    testutil.HomeKey
	keyring string // a directory holding A's and B's public keys
}

func newSignedStore(t *testing.T) *signedStore {
	t.Helper()
	testutil.RequireFUSE(t)
	g := testutil.NewGPGHome(t)
	keys := t.TempDir()
	s := &signedStore{gpg: g, keyring: filepath.Join(keys, "keyring")}
	s.a = g.GenKey(t, keys, "Builder A <a@example.com>", "pass of A")
	s.b = g.GenKey(t, keys, "Rebuilder B <b@example.com>", "")
	if err := os.Mkdir(s.keyring, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, k := range []testutil.HomeKey{s.a, s.b} {
		pub, err := os.ReadFile(k.Public)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s.keyring, filepath.Base(k.Public)), pub, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := testutil.S3Server(t)
	s.cfg = s3Config(t, env, env.NewBucket(t))
	return s
}

// config is a mount's configuration: the store requires k sign-offs of A
// and B; the mount signs what it publishes with signer (nil: it does not
// sign).
func (s *signedStore) config(t *testing.T, k int, signer *testutil.HomeKey) config.Config {
	t.Helper()
	cfg := s.cfg
	cfg.Stores = slices.Clone(s.cfg.Stores)
	cfg.Stores[0].Keyring = s.keyring
	cfg.Stores[0].RequireSignoffs = k
	cfg.Cache.Dir = t.TempDir()
	if signer != nil {
		cfg.Publish.SignKey, cfg.Publish.SignPassphraseFile = signer.Secret, signer.PassFile
	}
	return validConfig(t, cfg)
}

// publish publishes data under key through a mount signing with signer,
// as bitbake does (temp file, link onto the final name, unlink; then the
// siginfo), and closes the mount, which uploads and records everything.
// The mount requires two sign-offs, as a rebuilder's would: an archive
// with fewer is absent, so bitbake builds and publishes it.
func (s *signedStore) publish(t *testing.T, signer *testutil.HomeKey, key string, data []byte) *mount.Mount {
	t.Helper()
	m, closeMount := startStoresMount(t, s.config(t, 2, signer))
	publishBytes(t, m.Mountpoint(), key, data)
	closeMount()
	return m
}

// publishBytes replays bitbake's publication of an archive whose bytes
// are data (sstate_create_and_sign_package: an O_EXCL temp file, chmod
// 0664, link onto the final name, unlink), then writes its siginfo: the
// bytes are given, not made by tar, so that two builders publish
// identical ones.
func publishBytes(t *testing.T, mp, key string, data []byte) {
	t.Helper()
	final := filepath.Join(mp, key)
	dir := filepath.Dir(final)
	for _, d := range []string{filepath.Dir(filepath.Dir(dir)), filepath.Dir(dir), dir} {
		if err := syscall.Mkdir(d, 0o777); err != nil && !errors.Is(err, syscall.EEXIST) {
			t.Fatalf("mkdir %s: %v", d, err)
		}
	}
	tmp := final + "Xy12_ab"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		t.Fatalf("temp: %v", err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chmod(tmp, 0o664); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(tmp, final); err != nil {
		t.Fatalf("link(tmp, final): %v", err)
	}
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	testutil.DumpSiginfo(t, final, `{"task": "`+key+`"}`)
}

// signers returns the fingerprints of the sign-offs the store's index
// holds for key (over the bytes it indexes), and fails if any sign-off is
// of another name than an archive's.
func (s *signedStore) signers(t *testing.T, key string) []string {
	t.Helper()
	ix := loadIndex(t, s.cfg)
	for so := range ix.EachSignoff {
		if strings.HasSuffix(so.Key, ".siginfo") || strings.HasSuffix(so.Key, ".sig") {
			t.Errorf("sign-off of %s: only archives are signed off", so.Key)
		}
	}
	var out []string
	for _, so := range ix.Signoffs(key) {
		out = append(out, so.Fingerprint)
	}
	return out
}

// put writes data under key straight into the bucket (replacing what is
// there), as anyone with write access to it can.
func (s *signedStore) put(t *testing.T, key string, data []byte) {
	t.Helper()
	ctx := context.Background()
	st, err := stores.Open(ctx, s.cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, key); err != nil && !errors.Is(err, backend.ErrNotExist) {
		t.Fatal(err)
	}
	if err := st.Create(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

// rebuildIndex builds the store's index from what the bucket holds and
// saves it (`sstatefs index build`).
func (s *signedStore) rebuildIndex(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	st, err := stores.Open(ctx, s.cfg.Stores[0])
	if err != nil {
		t.Fatal(err)
	}
	ix, err := index.Build(ctx, st, index.BuildOptions{Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := index.Save(ctx, st, ix); err != nil {
		t.Fatal(err)
	}
}

// viewer mounts the store under a policy requiring k sign-offs, without a
// signing key.
func (s *signedStore) viewer(t *testing.T, k int) string {
	t.Helper()
	m, _ := startStoresMount(t, s.config(t, k, nil))
	return m.Mountpoint()
}

// wantVisible reads key through the mount at mp and fails unless it is
// data; then it checks the presented .sig with gpg as bitbake's
// SSTATE_VERIFY_SIG does: a GOODSIG for each of want (fingerprints), and
// no other.
func (s *signedStore) wantVisible(t *testing.T, mp, key string, data []byte, want ...string) {
	t.Helper()
	r := readVia(t, mp, key)
	if r.err != nil || !bytes.Equal(r.data, data) {
		t.Fatalf("read %s: %d bytes, %v; want the %d published", key, len(r.data), r.err, len(data))
	}
	sig := readVia(t, mp, key+".sig")
	if sig.err != nil {
		t.Fatalf("read the presented %s.sig: %v", key, sig.err)
	}
	good, status, err := s.gpg.VerifyStatus(t, sig.data, data)
	if err != nil {
		t.Fatalf("gpg --verify of the presented .sig: %v\n%s", err, status)
	}
	slices.Sort(good)
	slices.Sort(want)
	if !slices.Equal(good, want) {
		t.Fatalf("gpg --verify: GOODSIG by %v, want %v\n%s", good, want, status)
	}
}

// wantHidden fails unless key is absent through the mount at mp, and no
// byte of it can be read.
func wantHidden(t *testing.T, mp, key string) {
	t.Helper()
	wantAbsent(t, mp, key)
	if r := readVia(t, mp, key); r.err == nil || len(r.data) > 0 {
		t.Errorf("read %s: %d bytes, %v; want it hidden", key, len(r.data), r.err)
	}
}

// archive is the bytes of a small sstate archive (real tar and zstd).
func archive(t *testing.T) []byte {
	t.Helper()
	data, _ := makeArchive(t)
	return data
}

// TestSigningRebuilderSignoff: an archive published by a mount signing
// with A has one sign-off and stays hidden under require_signoffs = 2;
// once a rebuilder signing with B publishes the identical bytes, it has
// two, is visible and served, and its presented .sig verifies with gpg
// for both keys. Siginfo files are never signed off.
func TestSigningRebuilderSignoff(t *testing.T) {
	s := newSignedStore(t)
	key, data := testKey(1, "populate_sysroot"), archive(t)

	s.publish(t, &s.a, key, data)
	if got := s.signers(t, key); !slices.Equal(got, []string{s.a.Fingerprint}) {
		t.Fatalf("sign-offs after A published: %v, want A's (%s)", got, s.a.Fingerprint)
	}
	wantHidden(t, s.viewer(t, 2), key)

	// the rebuilder: the name is hidden from it, it builds the task and
	// publishes the same bytes; the store keeps A's object, B signs it off
	m := s.publish(t, &s.b, key, data)
	if st := m.Queue().Stats(); st.Existing < 1 || st.Signed != 1 || st.Conflicts != 0 {
		t.Errorf("rebuilder's queue: %+v; want the archive already there and 1 sign-off", st)
	}
	got := s.signers(t, key)
	slices.Sort(got)
	want := []string{s.a.Fingerprint, s.b.Fingerprint}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("sign-offs after B published the same bytes: %v, want A's and B's %v", got, want)
	}
	s.wantVisible(t, s.viewer(t, 2), key, data, s.a.Fingerprint, s.b.Fingerprint)
}

// TestSigningPolicies: one sign-off (A's) under K = 0, 1 and 2: visible,
// visible with A's signature, hidden.
func TestSigningPolicies(t *testing.T) {
	s := newSignedStore(t)
	key, data := testKey(2, "populate_sysroot"), archive(t)
	s.publish(t, &s.a, key, data)

	if r := readVia(t, s.viewer(t, 0), key); r.err != nil || !bytes.Equal(r.data, data) {
		t.Errorf("K=0: read %s: %d bytes, %v; want it served", key, len(r.data), r.err)
	}
	s.wantVisible(t, s.viewer(t, 1), key, data, s.a.Fingerprint)
	wantHidden(t, s.viewer(t, 2), key)
}

// TestSigningGPGSig: bitbake's own .sig (SSTATE_SIG_KEY: gpg
// --detach-sign of the archive, uploaded beside it) counts as one
// sign-off: visible under K = 1; with a rebuilder's sign-off by B, under
// K = 2, and the presented .sig then holds both.
func TestSigningGPGSig(t *testing.T) {
	s := newSignedStore(t)
	key, data := testKey(3, "populate_sysroot"), archive(t)
	s.put(t, key, data)
	s.put(t, key+".sig", s.gpg.DetachSign(t, s.a, data))
	s.rebuildIndex(t)

	s.wantVisible(t, s.viewer(t, 1), key, data, s.a.Fingerprint)
	wantHidden(t, s.viewer(t, 2), key)

	s.publish(t, &s.b, key, data)
	if got := s.signers(t, key); !slices.Equal(got, []string{s.b.Fingerprint}) {
		t.Fatalf("sign-offs recorded: %v, want B's (A's is the stored .sig)", got)
	}
	s.wantVisible(t, s.viewer(t, 2), key, data, s.a.Fingerprint, s.b.Fingerprint)
}

// TestSigningTampered: bytes changed in the bucket after A and B signed
// them (index rebuilt over the new bytes) are hidden; so is an object
// whose stored .sig was tampered with, even though it claims enough
// signers: no byte of either is ever served.
func TestSigningTampered(t *testing.T) {
	s := newSignedStore(t)
	key, data := testKey(4, "populate_sysroot"), archive(t)
	s.publish(t, &s.a, key, data)
	s.publish(t, &s.b, key, data)
	s.wantVisible(t, s.viewer(t, 2), key, data, s.a.Fingerprint, s.b.Fingerprint)

	evil := slices.Clone(data)
	evil[len(evil)/2] ^= 0xff
	s.put(t, key, evil)
	s.rebuildIndex(t)
	wantHidden(t, s.viewer(t, 2), key)
	wantHidden(t, s.viewer(t, 1), key)

	// a second object: A's gpg .sig stored beside it, then tampered with;
	// B's sign-off is genuine, so two keys claim it and the lookup may
	// find it, but the open verifies every signature and refuses
	key2, data2 := testKey(5, "populate_sysroot"), archive(t)
	s.put(t, key2, data2)
	sig := s.gpg.DetachSign(t, s.a, data2)
	sig[len(sig)-3] ^= 0x01
	s.put(t, key2+".sig", sig)
	s.rebuildIndex(t)
	s.publish(t, &s.b, key2, data2)
	mp := s.viewer(t, 2)
	for range 2 { // the verdict is remembered: refused again
		if r := readVia(t, mp, key2); r.err == nil || len(r.data) > 0 {
			t.Errorf("read %s with a tampered .sig: %d bytes, %v; want a failure and no byte", key2, len(r.data), r.err)
		}
	}
	// B's sign-off is there and genuine: A's tampered .sig is what hides it
	if got := s.signers(t, key2); !slices.Equal(got, []string{s.b.Fingerprint}) {
		t.Fatalf("sign-offs of %s: %v, want B's", key2, got)
	}
}

// TestSigningConflictNotSigned: a builder publishing other bytes under a
// name the store has records no sign-off; the store keeps the first
// writer's object with its sign-off only.
func TestSigningConflictNotSigned(t *testing.T) {
	s := newSignedStore(t)
	key, data := testKey(6, "populate_sysroot"), archive(t)
	s.publish(t, &s.a, key, data)
	other := archive(t)
	m := s.publish(t, &s.b, key, other)
	// the index counts only sign-offs over the bytes it holds: the queue's
	// count tells whether one over other bytes was recorded at all
	if st := m.Queue().Stats(); st.Conflicts != 1 || st.Signed != 0 {
		t.Errorf("rebuilder with other bytes: %d conflicts, %d sign-offs; want 1 and none", st.Conflicts, st.Signed)
	}
	if got := s.signers(t, key); !slices.Equal(got, []string{s.a.Fingerprint}) {
		t.Fatalf("sign-offs: %v, want A's only (%s)", got, s.a.Fingerprint)
	}
	ix := loadIndex(t, s.cfg)
	for so := range ix.EachSignoff {
		if so.Fingerprint == s.b.Fingerprint {
			t.Errorf("B signed off %s", so.Key)
		}
	}
}

// TestSigningBadKey: a signing key that does not load fails the start with
// an error naming the file, never the passphrase.
func TestSigningBadKey(t *testing.T) {
	s := newSignedStore(t)
	wrong := filepath.Join(t.TempDir(), "wrong.pass")
	if err := os.WriteFile(wrong, []byte("not the passphrase of A\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(t.TempDir(), "garbage.asc")
	if err := os.WriteFile(garbage, []byte("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nnot a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, key, pass, names string }{
		{"wrong passphrase", s.a.Secret, wrong, wrong},
		{"no passphrase", s.a.Secret, "", s.a.Secret},
		{"not a key", garbage, "", garbage},
		{"public key", s.a.Public, "", s.a.Public},
		{"missing", filepath.Join(t.TempDir(), "none.asc"), "", "none.asc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := s.config(t, 0, nil)
			cfg.Publish.SignKey, cfg.Publish.SignPassphraseFile = tc.key, tc.pass
			m, err := tryMount(t, cfg)
			if err == nil {
				m.Close()
				t.Fatal("mount started with a signing key that does not load")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.names) || !strings.Contains(msg, "publish.sign_key") {
				t.Errorf("error %q does not name %s and publish.sign_key", msg, tc.names)
			}
			for _, secret := range []string{s.a.Passphrase, "not the passphrase"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q shows a passphrase", msg)
				}
			}
		})
	}
}
