package view

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/signing"
	"github.com/sstatefs/sstatefs/sstate"
)

// Policy is a store's signature policy: the keys whose signatures count,
// and how many distinct ones an object needs.
//
// With Require ≥ 1 an sstate archive of the store is shown only when at
// least Require distinct keyring keys signed its exact bytes: its stored
// .sig (bitbake's SSTATE_SIG_KEY) and the sign-off records of the store's
// index count. A lookup decides from the signatures' issuers (no download);
// the first open downloads the whole object and verifies every signature
// over its bytes before a byte is served, and an object any keyring key's
// signature fails for is hidden from then on. Either way a hidden object is
// absent, so bitbake builds the task instead of restoring it.
//
// Whatever Require says, the archive's .sig is presented as the
// concatenation of the keyring keys' signatures the mount holds for it
// (the stored .sig, then the sign-offs), so bitbake's own
// SSTATE_VERIFY_SIG works on top with any of the signers' keys.
type Policy struct {
	Keyring *signing.Keyring
	Require int
}

// Reasons an object is hidden.
const (
	HiddenUnsigned = "unsigned"      // fewer keyring keys signed it than required
	HiddenBadSig   = "bad signature" // a keyring key's signature does not verify
)

// ErrHidden is returned by Open for an object its store's policy hides.
var ErrHidden = errors.New("hidden by the store's signature policy")

// maxSigSize bounds a stored .sig read into memory.
const maxSigSize = 64 << 10

// policyState is a tier's memory of signatures and verdicts.
type policyState struct {
	sigs     *lru.Cache[string, []byte] // stored .sig bytes by key, size and mtime
	verdicts *lru.Cache[string, string] // "" (verified) or why hidden, by object and signatures
	flight   singleflight.Group

	mu     sync.Mutex
	logged map[string]bool // names whose hiding was logged (bounded)
}

func newPolicyState() *policyState {
	sigs, _ := lru.New[string, []byte](10_000)
	verdicts, _ := lru.New[string, string](100_000)
	return &policyState{sigs: sigs, verdicts: verdicts, logged: map[string]bool{}}
}

// isArchive reports whether key names an sstate archive (not a .siginfo
// or .sig companion): what a policy applies to.
func isArchive(key string) bool {
	n, err := sstate.Parse(key)
	return err == nil && n.Companion == ""
}

// signatures returns what the mount presents as o's .sig: the stored .sig
// if a keyring key issued it, then the sign-offs of keyring keys over o's
// bytes; and the distinct keyring keys that claim to have signed.
func (v *View) signatures(ctx context.Context, t *tier, o Object) ([]byte, int, error) {
	stored, err := v.storedSig(ctx, t, o.Source)
	if err != nil {
		return nil, 0, err
	}
	sigs, n := Presented(t.Policy.Keyring, stored, t.Index.Current().Signoffs(o.Source))
	return sigs, n, nil
}

// Presented is the rule of what a store with keyring kr presents as an
// archive's .sig: the stored .sig (nil if none) if a keyring key issued
// it, then the sign-offs whose issuer is a keyring key. n is the number of
// distinct keyring keys that claim to have signed: what a lookup compares
// with Policy.Require before anything is verified. `sstatefs verify`
// applies the same rule.
func Presented(kr *signing.Keyring, stored []byte, signoffs []index.Signoff) (sigs []byte, n int) {
	claimed := map[string]bool{}
	if stored != nil {
		if k, ok := kr.Issuer(stored); ok {
			sigs = append(sigs, stored...)
			claimed[k.Fingerprint] = true
		}
	}
	for _, s := range signoffs {
		if k, ok := kr.Issuer(s.Signature); ok {
			sigs = append(sigs, s.Signature...)
			claimed[k.Fingerprint] = true
		}
	}
	return sigs, len(claimed)
}

// Judge is the verdict on the presented signatures once verified over the
// object's bytes: "" when the object is shown under require, else why it
// is hidden (as a bad signature): a keyring key's signature that fails,
// or fewer valid signers than required. A signature by a key outside the
// keyring is not presented, so it never counts either way.
func Judge(signers []signing.Signer, problems []signing.Problem, require int) string {
	for _, p := range problems {
		if p.Key.Fingerprint != "" {
			return p.Error()
		}
	}
	if len(signers) < require {
		return fmt.Sprintf("%d valid signatures of keyring keys, %d required", len(signers), require)
	}
	return ""
}

// storedSig returns the bytes of the .sig the store holds beside src, nil
// if none; kept in memory by size and mtime.
func (v *View) storedSig(ctx context.Context, t *tier, src string) ([]byte, error) {
	key := src + ".sig"
	var size int64
	var id string
	ix := t.Index.Current()
	if o, ok := ix.Lookup(key); ok {
		size, id = o.Size, fmt.Sprint(key, o.Size, o.ModTime.UnixNano())
	} else if ix != nil && t.Index.Fresh() {
		return nil, nil
	} else {
		po, present, err := v.probe(ctx, t, key)
		if err != nil || !present {
			return nil, err
		}
		size, id = po.Size, fmt.Sprint(key, po.Size, po.ModTime.UnixNano())
	}
	if size > maxSigSize {
		return nil, fmt.Errorf("%s: %d bytes is no signature", key, size)
	}
	if b, ok := t.policy.sigs.Get(id); ok {
		return b, nil
	}
	rc, err := t.Store.Store.Open(ctx, key, 0, -1)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxSigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	t.policy.sigs.Add(id, b)
	return b, nil
}

// verdictKey names a verification: the object's bytes and the signatures.
func verdictKey(o Object, sigs []byte) string {
	h := sha256.Sum256(sigs)
	return o.Source + "\x00" + hex.EncodeToString(o.SHA256[:]) + fmt.Sprint(o.Size, o.ModTime.UnixNano()) + "\x00" + hex.EncodeToString(h[:])
}

// visible applies t's policy to o at lookup: an archive needs Require
// keyring keys among the issuers of its signatures, and no verification
// that failed. Names outside the policy are visible.
func (v *View) visible(ctx context.Context, t *tier, o Object) bool {
	if t.Policy == nil || t.Policy.Require == 0 || !isArchive(o.Key) {
		return true
	}
	sigs, enough, err := v.claimed(ctx, t, o)
	if err != nil {
		v.hide(t, o, HiddenUnsigned, fmt.Sprintf("its signature could not be read: %v", err))
		return false
	}
	if !enough {
		return false
	}
	if why, ok := t.policy.verdicts.Get(verdictKey(o, sigs)); ok && why != "" {
		return false
	}
	return true
}

// claimed returns the signatures presented for o and whether enough
// keyring keys claim to have signed it (Policy.Require); an archive with
// too few is hidden as unsigned.
func (v *View) claimed(ctx context.Context, t *tier, o Object) (sigs []byte, enough bool, err error) {
	sigs, n, err := v.signatures(ctx, t, o)
	if err != nil {
		return nil, false, err
	}
	if n < t.Policy.Require {
		v.hide(t, o, HiddenUnsigned, fmt.Sprintf("%d of the %d required keyring keys signed it", n, t.Policy.Require))
		return nil, false, nil
	}
	return sigs, true, nil
}

// verify checks every signature the mount presents for o over o's bytes,
// once per object and signatures, before its first byte is served: the
// whole object is downloaded (verified against its digest) and read once
// more through the signature check.
func (v *View) verify(ctx context.Context, t *tier, o Object) error {
	sigs, enough, err := v.claimed(ctx, t, o)
	if err != nil {
		return err
	}
	if !enough {
		return fmt.Errorf("%s: %w (%s)", o.Key, ErrHidden, HiddenUnsigned)
	}
	vk := verdictKey(o, sigs)
	why, err, _ := t.policy.flight.Do(vk, func() (any, error) {
		if why, ok := t.policy.verdicts.Get(vk); ok {
			return why, nil
		}
		f, err := v.cache.Open(ctx, v.cacheObject(o))
		if err != nil {
			return "", err
		}
		defer f.Close()
		check := t.Policy.Keyring.Prepare(sigs)
		if _, err := io.Copy(check, io.NewSectionReader(f, 0, o.Size)); err != nil {
			return "", fmt.Errorf("%s: reading for the signature check: %w", o.Key, err)
		}
		signers, problems := check.Result()
		why := Judge(signers, problems, t.Policy.Require)
		t.policy.verdicts.Add(vk, why)
		if why == "" {
			t.verified.Add(1)
		}
		return why, nil
	})
	if err != nil {
		return err
	}
	if why.(string) != "" {
		v.hide(t, o, HiddenBadSig, why.(string))
		return fmt.Errorf("%s: %w (%s)", o.Key, ErrHidden, HiddenBadSig)
	}
	return nil
}

// hide counts and logs (once per name) an object the policy hides.
func (v *View) hide(t *tier, o Object, reason, detail string) {
	t.policy.mu.Lock()
	first := !t.policy.logged[o.Key+"\x00"+reason]
	if first && len(t.policy.logged) < 100_000 {
		t.policy.logged[o.Key+"\x00"+reason] = true
	}
	t.policy.mu.Unlock()
	if !first {
		return
	}
	if reason == HiddenBadSig {
		t.hiddenBadSig.Add(1)
	} else {
		t.hiddenUnsigned.Add(1)
	}
	v.log.Warn("object hidden by the store's signature policy: bitbake builds it instead", "store", t.Name, "object", o.Key, "reason", reason, "detail", detail)
}

// presentSig answers a lookup of an archive's .sig in a store with a
// keyring: the signatures the mount holds for the archive found at
// archive (see Policy).
func (v *View) presentSig(ctx context.Context, key string, arch Object) (Object, error) {
	t := v.stores[arch.Store]
	sigs, _, err := v.signatures(ctx, t, arch)
	if err != nil {
		return Object{}, err
	}
	if len(sigs) == 0 {
		return Object{}, notExist(key)
	}
	return Object{Key: key, Size: int64(len(sigs)), ModTime: arch.ModTime, SHA256: sha256.Sum256(sigs),
		Source: arch.Source + ".sig", Store: arch.Store, Content: sigs}, nil
}
