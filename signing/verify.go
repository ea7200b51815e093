package signing

import (
	"crypto"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Signer is a distinct primary key with a valid signature over the bytes.
type Signer struct {
	Key
	// SigningKeyID is the long key id of the key that made the signature:
	// the primary key's own, or a signing subkey's.
	SigningKeyID string
	// Created is the signature's creation time, as the signer claims it.
	Created time.Time
}

// Problem is a signature that does not count, and why.
type Problem struct {
	// Index is the position of the signature packet in the input, from 0.
	Index int
	// Issuer is the issuer as the signature names it (fingerprint if it
	// carries one, else key id), "" when the packet could not be read.
	Issuer string
	// Key is the keyring's primary key of the issuer, zero when unknown.
	Key Key
	// Err wraps one of ErrUnknownKey, ErrBadSignature, ErrSignatureExpired,
	// ErrKeyExpired, ErrKeyRevoked, ErrUnsupported, ErrCorrupt.
	Err error
}

func (p Problem) Error() string {
	if p.Issuer == "" {
		return fmt.Sprintf("signature %d: %v", p.Index, p.Err)
	}
	return fmt.Sprintf("signature %d by %s: %v", p.Index, p.Issuer, p.Err)
}

func (p Problem) Unwrap() error { return p.Err }

// Option changes how signatures are made or checked.
type Option func(*options)

type options struct {
	now func() time.Time
}

// At checks (or signs) as if the time were t: expiry and revocation are
// judged at t. Tests use it; so may a caller re-checking at a recorded time.
func At(t time.Time) Option {
	return func(o *options) { o.now = func() time.Time { return t } }
}

func newOptions(opts []Option) options {
	o := options{now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Verify checks every signature packet in sig (binary packets one after
// the other, or armored blocks) against the bytes read from signed, which
// is read once to its end. It returns the distinct primary keys with a valid
// signature, in order of first appearance, and one Problem per signature
// that does not count. An empty sig has neither signers nor problems: the
// object is unsigned. err is only a failure to read signed.
func (kr *Keyring) Verify(sig []byte, signed io.Reader, opts ...Option) ([]Signer, []Problem, error) {
	c := kr.Prepare(sig, opts...)
	if c.Hashing() {
		if _, err := io.Copy(c, signed); err != nil {
			return nil, nil, fmt.Errorf("reading signed bytes: %w", err)
		}
	}
	valid, problems := c.Result()
	return valid, problems, nil
}

// Check verifies signatures over bytes that are fed to it with Write, so a
// caller that already streams an object (to check its digest, to serve it)
// verifies its signatures in the same pass. Feed every byte, in order, then
// call Result. A Check is not safe for concurrent use.
type Check struct {
	kr       *Keyring
	now      time.Time
	pending  []pending
	w        io.Writer
	problems []Problem
	result   []Signer
	done     bool
}

type pending struct {
	index int
	sig   *packet.Signature
	keys  []openpgp.Key
	h     hash.Hash // shared by every signature with the same hash input
}

// hashInput is what makes two signatures' hashes of the same bytes equal.
type hashInput struct {
	hash crypto.Hash
	text bool
	salt string
}

// Prepare parses sig (see Verify) and returns the Check to feed the signed
// bytes to. Signatures that can already be judged (unreadable, unknown
// issuer, unsupported algorithm) become Problems without hashing anything;
// the others share one hash per hash algorithm.
func (kr *Keyring) Prepare(sig []byte, opts ...Option) *Check {
	o := newOptions(opts)
	c := &Check{kr: kr, now: o.now()}
	parsed, _ := parseSignatures(sig)
	hashes := map[hashInput]hash.Hash{}
	var writers []io.Writer
	for _, p := range parsed {
		if p.err != nil {
			c.problems = append(c.problems, Problem{Index: p.index, Issuer: p.issuer, Err: p.err})
			continue
		}
		keys := kr.candidates(p.sig)
		if len(keys) == 0 {
			c.problems = append(c.problems, Problem{Index: p.index, Issuer: p.issuer, Err: ErrUnknownKey})
			continue
		}
		in := hashInput{hash: p.sig.Hash, text: p.sig.SigType == packet.SigTypeText}
		if p.sig.Version == 6 {
			in.salt = string(p.sig.Salt())
		}
		h, ok := hashes[in]
		if !ok {
			var err error
			h, err = p.sig.PrepareVerify()
			if err != nil {
				c.problems = append(c.problems, Problem{Index: p.index, Issuer: p.issuer, Key: keyOf(keys[0].Entity), Err: fmt.Errorf("%w: %v", ErrUnsupported, err)})
				continue
			}
			hashes[in] = h
			if in.text {
				writers = append(writers, openpgp.NewCanonicalTextHash(h))
			} else {
				writers = append(writers, h)
			}
		}
		c.pending = append(c.pending, pending{index: p.index, sig: p.sig, keys: keys, h: h})
	}
	switch len(writers) {
	case 0:
		c.w = io.Discard
	case 1:
		c.w = writers[0]
	default:
		c.w = io.MultiWriter(writers...)
	}
	return c
}

// Hashing reports whether any signature needs the signed bytes; when not,
// Result is already known and feeding the bytes is optional.
func (c *Check) Hashing() bool { return len(c.pending) > 0 }

// Write feeds signed bytes; it never fails.
func (c *Check) Write(p []byte) (int, error) { return c.w.Write(p) }

// Result judges every signature over the bytes written so far. It returns
// the distinct primary keys with a valid signature and the Problems, each
// sorted by position of the signature. Calling it again returns the same.
func (c *Check) Result() ([]Signer, []Problem) {
	if c.done {
		return c.result, c.problems
	}
	c.done = true
	seen := map[string]bool{}
	for _, p := range c.pending {
		s, err := c.judge(p)
		if err != nil {
			c.problems = append(c.problems, Problem{Index: p.index, Issuer: issuerName(p.sig), Key: keyOf(p.keys[0].Entity), Err: err})
			continue
		}
		if !seen[s.Fingerprint] {
			seen[s.Fingerprint] = true
			c.result = append(c.result, s)
		}
	}
	sortProblems(c.problems)
	return c.result, c.problems
}

// judge verifies one signature against each key that may have made it.
func (c *Check) judge(p pending) (Signer, error) {
	var last error = ErrBadSignature
	for _, k := range p.keys {
		h, err := cloneHash(p.sig.Hash, p.h)
		if err != nil {
			return Signer{}, err
		}
		err = k.PublicKey.VerifySignature(h, p.sig)
		if err != nil {
			last = classify(err)
			continue
		}
		if err := c.keyValid(k, p.sig); err != nil {
			return Signer{}, err
		}
		return Signer{
			Key:          keyOf(k.Entity),
			SigningKeyID: fmt.Sprintf("%016X", k.PublicKey.KeyId),
			Created:      p.sig.CreationTime,
		}, nil
	}
	return Signer{}, last
}

// keyValid checks, at the Check's time, what a valid signature still needs:
// the key may sign, is neither revoked nor expired, and the signature has
// not expired. (openpgp's own check of these is unexported.)
func (c *Check) keyValid(k openpgp.Key, sig *packet.Signature) error {
	now := c.now
	e := k.Entity
	primarySig, primaryID := e.PrimarySelfSignature()
	bySubkey := k.PublicKey != e.PrimaryKey
	if primarySig == nil || k.SelfSignature == nil {
		return fmt.Errorf("%w: key has no self-signature", ErrBadSignature)
	}
	if !k.SelfSignature.FlagsValid || !k.SelfSignature.FlagSign {
		return fmt.Errorf("%w: key %016X may not sign", ErrBadSignature, k.PublicKey.KeyId)
	}
	for _, s := range []*packet.Signature{sig, primarySig, k.SelfSignature} {
		for _, n := range s.Notations {
			if n.IsCritical {
				return fmt.Errorf("%w: critical notation %q", ErrUnsupported, n.Name)
			}
		}
	}
	if e.Revoked(now) || (bySubkey && k.Revoked(now)) || (primaryID != nil && primaryID.Revoked(now)) {
		return ErrKeyRevoked
	}
	if e.PrimaryKey.KeyExpired(primarySig, now) || primarySig.SigExpired(now) {
		return ErrKeyExpired
	}
	if bySubkey && (k.PublicKey.KeyExpired(k.SelfSignature, now) || k.SelfSignature.SigExpired(now)) {
		return ErrKeyExpired
	}
	if sig.SigExpired(now) {
		return ErrSignatureExpired
	}
	return nil
}

// cloneHash copies the state of h, so each signature and each candidate
// key finishes its own copy of the one hash of the bytes.
func cloneHash(alg crypto.Hash, h hash.Hash) (hash.Hash, error) {
	if c, ok := h.(hash.Cloner); ok {
		return c.Clone()
	}
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil, fmt.Errorf("%w: hash %v cannot be copied", ErrUnsupported, alg)
	}
	state, err := m.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	n := alg.New()
	if err := n.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return n, nil
}

func classify(err error) error {
	var unsupported pgperrors.UnsupportedError
	if errors.As(err, &unsupported) {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	var invalid pgperrors.InvalidArgumentError
	if errors.As(err, &invalid) {
		// The algorithm of the signature is not the key's.
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return ErrBadSignature
}

func sortProblems(ps []Problem) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].Index < ps[j-1].Index; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

func issuerName(sig *packet.Signature) string {
	if len(sig.IssuerFingerprint) > 0 {
		return upperHex(sig.IssuerFingerprint)
	}
	if sig.IssuerKeyId != nil {
		return fmt.Sprintf("%016X", *sig.IssuerKeyId)
	}
	return ""
}

type parsedSig struct {
	index  int
	sig    *packet.Signature
	issuer string
	err    error
}

// weakHashes are refused: a signature over a SHA-1 (or weaker) digest can
// be moved to other bytes with a collision.
var weakHashes = map[crypto.Hash]bool{crypto.MD5: true, crypto.SHA1: true, crypto.RIPEMD160: true}

// parseSignatures reads the signature packets of sig. A packet that cannot
// be read ends the reading of its block (packet boundaries after it are
// unknown); it is returned with ErrCorrupt.
func parseSignatures(sig []byte) ([]parsedSig, error) {
	var out []parsedSig
	add := func(p parsedSig) {
		p.index = len(out)
		out = append(out, p)
	}
	err := eachPacketBlock(sig, func(r io.Reader) error {
		packets := packet.NewReader(r)
		for {
			p, err := packets.NextWithUnsupported()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				add(parsedSig{err: fmt.Errorf("%w: %v", ErrCorrupt, err)})
				return nil
			}
			switch p := p.(type) {
			case *packet.UnsupportedPacket:
				ps := parsedSig{err: fmt.Errorf("%w: %v", ErrUnsupported, p.Error)}
				if s, ok := p.IncompletePacket.(*packet.Signature); ok && s != nil {
					ps.issuer = issuerName(s)
				}
				add(ps)
			case *packet.Signature:
				ps := parsedSig{sig: p, issuer: issuerName(p)}
				switch {
				case p.SigType != packet.SigTypeBinary && p.SigType != packet.SigTypeText:
					ps.err = fmt.Errorf("%w: signature type %#x is not a document signature", ErrCorrupt, int(p.SigType))
				case weakHashes[p.Hash] || !p.Hash.Available():
					ps.err = fmt.Errorf("%w: hash %v", ErrUnsupported, p.Hash)
				case ps.issuer == "":
					ps.err = fmt.Errorf("%w: signature names no issuer", ErrCorrupt)
				}
				if ps.err != nil {
					ps.sig = nil
				}
				add(ps)
			default:
				add(parsedSig{err: fmt.Errorf("%w: %T is not a signature packet", ErrCorrupt, p)})
			}
		}
	})
	if err != nil {
		add(parsedSig{err: fmt.Errorf("%w: %v", ErrCorrupt, err)})
	}
	return out, err
}
