package signing

import (
	"bytes"
	"crypto"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// SignKey is a secret key ready to make detached signatures. It is safe for
// concurrent use.
type SignKey struct {
	entity *openpgp.Entity
	signer openpgp.Key // the (sub)key that signs
	key    Key
	now    func() time.Time
}

// LoadSigner reads an armored or binary secret key (`gpg
// --export-secret-keys`, one primary key with its subkeys). When the key is
// protected, passphraseFile holds the passphrase (its trailing newline is
// stripped, as OE-core's gpg_sign.py does); passphraseFile may be "" for an
// unprotected key. The key must be able to sign now (or at the time of At):
// an expired or revoked key, or one without a signing (sub)key, is an error
// naming its fingerprint.
func LoadSigner(keyFile, passphraseFile string, opts ...Option) (*SignKey, error) {
	o := newOptions(opts)
	el, err := readKeyFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("signing key %w", err)
	}
	var e *openpgp.Entity
	for _, c := range el {
		if c.PrivateKey == nil {
			continue
		}
		if e != nil {
			return nil, fmt.Errorf("signing key %s: %w", keyFile, ErrSeveralKeys)
		}
		e = c
	}
	if e == nil {
		return nil, fmt.Errorf("signing key %s: %w", keyFile, ErrNoSecretKey)
	}
	k := keyOf(e)
	now := o.now()
	signer, err := usableSigningKey(e, now)
	if err != nil {
		return nil, fmt.Errorf("signing key %s (%s): %w", keyFile, k.Fingerprint, err)
	}
	if signer.PrivateKey == nil || signer.PrivateKey.Dummy() {
		return nil, fmt.Errorf("signing key %s (%s): %w", keyFile, k.Fingerprint, ErrNoSecretSubkey)
	}
	if signer.PrivateKey.Encrypted {
		if passphraseFile == "" {
			return nil, fmt.Errorf("signing key %s (%s): %w", keyFile, k.Fingerprint, ErrPassphraseNeeded)
		}
		pass, err := readPassphrase(passphraseFile)
		if err != nil {
			return nil, err
		}
		defer clear(pass)
		// Only the key that signs is decrypted: the others stay sealed.
		// The library's error is not wrapped: nothing of the attempt
		// belongs in an error.
		if err := signer.PrivateKey.Decrypt(pass); err != nil {
			return nil, fmt.Errorf("signing key %s (%s): %w (passphrase file %s)", keyFile, k.Fingerprint, ErrWrongPassphrase, passphraseFile)
		}
	}
	return &SignKey{entity: e, signer: signer, key: k, now: o.now}, nil
}

func readPassphrase(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errPassphraseFileBad, err)
	}
	// The first line, as gpg_sign.py reads it (readline, newline dropped).
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		data = data[:i]
	}
	return bytes.TrimSuffix(data, []byte("\r")), nil
}

// usableSigningKey picks the key that signs (the newest valid signing
// subkey, else the primary key), or says why there is none.
func usableSigningKey(e *openpgp.Entity, now time.Time) (openpgp.Key, error) {
	if k, ok := e.SigningKey(now); ok {
		return k, nil
	}
	primarySig, primaryID := e.PrimarySelfSignature()
	switch {
	case e.Revoked(now) || (primaryID != nil && primaryID.Revoked(now)):
		return openpgp.Key{}, fmt.Errorf("%w: %w", ErrCannotSign, ErrKeyRevoked)
	case primarySig != nil && (e.PrimaryKey.KeyExpired(primarySig, now) || primarySig.SigExpired(now)):
		return openpgp.Key{}, fmt.Errorf("%w: %w", ErrCannotSign, ErrKeyExpired)
	}
	return openpgp.Key{}, ErrCannotSign
}

// Key names the key: the primary fingerprint and key id, which is what a
// signature by it counts as.
func (s *SignKey) Key() Key { return s.key }

// Fingerprint is the primary key's fingerprint, upper-case hex.
func (s *SignKey) Fingerprint() string { return s.key.Fingerprint }

// KeyID is the primary key's long key id, upper-case hex.
func (s *SignKey) KeyID() string { return s.key.KeyID }

// Sign reads r to its end and returns a binary detached OpenPGP signature
// over its bytes, as `gpg --detach-sign` makes (bitbake's .sig).
func (s *SignKey) Sign(r io.Reader) ([]byte, error) {
	w := s.NewWriter()
	if _, err := io.Copy(w, r); err != nil {
		return nil, fmt.Errorf("reading bytes to sign: %w", err)
	}
	return w.Signature()
}

// NewWriter returns a SignWriter: a caller that streams the bytes anyway
// (publishing an object) signs them in the same pass.
func (s *SignKey) NewWriter() *SignWriter {
	// SHA-256: every OpenPGP implementation has it, and gpg 2.2 checks it
	// with any key algorithm.
	// No salt notation (go-crypto adds a random binary one by default):
	// gpg prints a notation's value raw in its --status-fd output, and
	// OE-core's verify() decodes that output as UTF-8, so one salted
	// signature in a .sig fails bitbake's SSTATE_VERIFY_SIG with a
	// UnicodeDecodeError. gpg's own signatures carry none either.
	noSalt := false
	cfg := &packet.Config{DefaultHash: crypto.SHA256, Time: s.now, NonDeterministicSignaturesViaNotation: &noSalt}
	pub := s.signer.PublicKey
	sig := &packet.Signature{
		Version:           pub.Version,
		SigType:           packet.SigTypeBinary,
		PubKeyAlgo:        pub.PubKeyAlgo,
		Hash:              cfg.Hash(),
		CreationTime:      cfg.Now(),
		IssuerKeyId:       &pub.KeyId,
		IssuerKeyVersion:  uint8(pub.Version),
		IssuerFingerprint: pub.Fingerprint,
	}
	h, err := sig.PrepareSign(cfg)
	return &SignWriter{key: s, cfg: cfg, sig: sig, h: h, err: err}
}

// SignWriter hashes the bytes written to it; Signature signs them.
type SignWriter struct {
	key *SignKey
	cfg *packet.Config
	sig *packet.Signature
	h   hash.Hash
	err error
}

// Write hashes p.
func (w *SignWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	return w.h.Write(p)
}

// Signature returns the binary detached signature over every byte written.
// Call it once: signing finishes the hash.
func (w *SignWriter) Signature() ([]byte, error) {
	if w.err != nil {
		return nil, fmt.Errorf("signing with %s: %w", w.key.key.Fingerprint, w.err)
	}
	if err := w.sig.Sign(w.h, w.key.signer.PrivateKey, w.cfg); err != nil {
		return nil, fmt.Errorf("signing with %s: %w", w.key.key.Fingerprint, err)
	}
	var buf bytes.Buffer
	if err := w.sig.Serialize(&buf); err != nil {
		return nil, fmt.Errorf("signing with %s: %w", w.key.key.Fingerprint, err)
	}
	return buf.Bytes(), nil
}
