package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/signing"
	"github.com/sstatefs/sstatefs/view"
)

var (
	// ErrNoIndex: signing and verifying need the store's index (the
	// digests the bytes are checked against, the sign-offs).
	ErrNoIndex = errors.New("the store has no index")
	// ErrNoDigest: the index holds the object without a digest, so its
	// bytes cannot be checked.
	ErrNoDigest = errors.New("the index records no digest for it (run sstatefs index build)")
)

// SignRecorder records sign-offs in the store's index journal: an
// index.Later, flushed by the caller.
type SignRecorder interface {
	Signed(s index.Signoff) error
}

// Selection chooses the sstate archives (not their .siginfo and .sig
// companions) of a store's index that Sign and Verify work on.
type Selection struct {
	// Keys names objects by store key or bare sstate file name; empty:
	// every archive of the index, or those accessed since AccessedSince
	// when it is set.
	Keys          []string
	AccessedSince time.Time
}

// archives returns the selected archives of ix, sorted by key, and the
// listed names ix does not hold as an archive.
func (sel Selection) archives(ix *index.Index) (objs []index.Object, missing []string) {
	seen := map[string]bool{}
	add := func(o index.Object) {
		if !seen[o.Key] && companion(o.Key) == "" {
			seen[o.Key] = true
			objs = append(objs, o)
		}
	}
	if len(sel.Keys) > 0 {
		keys := resolveNames(ix, sel.Keys)
		for _, name := range sel.Keys {
			found := false
			for _, k := range keys[name] {
				if o, ok := ix.Lookup(k); ok && companion(k) == "" {
					add(o)
					found = true
				}
			}
			if !found {
				missing = append(missing, name)
			}
		}
		sort.Strings(missing)
	} else {
		ix.Objects(func(o index.Object) bool {
			if accessedSince(o, sel.AccessedSince) {
				add(o)
			}
			return true
		})
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].Key < objs[j].Key })
	return objs, missing
}

// accessedSince reports whether o was used at or after since (always, for
// a zero since).
func accessedSince(o index.Object, since time.Time) bool {
	return since.IsZero() || !o.Accessed.IsZero() && !o.Accessed.Before(since)
}

// SignOptions configure Sign.
type SignOptions struct {
	Store backend.Store
	// Index is the store's index: the archives, their digests and the
	// sign-offs already recorded.
	Index *index.Index
	Key   *signing.SignKey
	// Recorder is the store's journal; unused by a dry run.
	Recorder SignRecorder
	Selection
	// DryRun lists what would be signed and reads nothing.
	DryRun   bool
	Jobs     int
	Progress Progress
	Logger   *slog.Logger
}

// SignResult counts what Sign did (or, in a dry run, would do).
type SignResult struct {
	// Signed archives got a sign-off; Already had one by this key over
	// the same bytes.
	Signed, Already int
	SignedBytes     int64
	// Mismatched archives' bytes are not those the index records: never
	// signed.
	Mismatched []string
	Failed     []error
	Missing    []string // listed names the index does not hold as archives
	// Planned is what a dry run would sign.
	Planned []index.Object
}

// Sign adds the key's sign-off to the selected archives of a store: each
// is downloaded, checked against the index's SHA-256 (bytes that do not
// match are reported and never signed) and signed in the same pass; the
// detached signature is recorded as an index.Signoff in the store's
// journal. Archives that already carry a sign-off by this key over the
// same digest are skipped, so running it again after an interruption
// signs only what is left.
func Sign(ctx context.Context, opt SignOptions) (SignResult, error) {
	var res SignResult
	opt.Jobs, opt.Logger = orDefaults(opt.Jobs, opt.Logger)
	if backend.IsReadOnly(opt.Store) {
		return res, fmt.Errorf("sign %s: %w", opt.Store.Location(), backend.ErrReadOnly)
	}
	if opt.Index == nil {
		return res, fmt.Errorf("sign %s: %w", opt.Store.Location(), ErrNoIndex)
	}
	objs, missing := opt.Selection.archives(opt.Index)
	res.Missing = missing
	fpr := opt.Key.Fingerprint()
	var todo []index.Object
	for _, o := range objs {
		if hasSignoff(opt.Index, o.Key, fpr) {
			res.Already++
			continue
		}
		todo = append(todo, o)
	}
	if opt.DryRun {
		res.Planned = todo
		return res, nil
	}
	type signed struct {
		s   index.Signoff
		err error
	}
	err := each(ctx, opt.Jobs, todo, func(o index.Object) int64 { return o.Size }, opt.Progress,
		func(ctx context.Context, o index.Object) signed {
			s, err := signOne(ctx, opt, o)
			return signed{s, err}
		},
		func(o index.Object, r signed) {
			switch {
			case ctx.Err() != nil && r.err != nil:
				// interrupted, not failed: the next run does it
			case errors.Is(r.err, ErrDigestMismatch):
				res.Mismatched = append(res.Mismatched, o.Key)
				opt.Logger.Error("not signed: the bytes do not match the index", "object", o.Key, "error", r.err)
			case r.err == nil:
				r.err = opt.Recorder.Signed(r.s)
				if r.err == nil {
					res.Signed++
					res.SignedBytes += o.Size
					return
				}
				fallthrough
			default:
				res.Failed = append(res.Failed, fmt.Errorf("%s: %w", o.Key, r.err))
				opt.Logger.Error("sign failed", "object", o.Key, "error", r.err)
			}
		})
	if err != nil {
		return res, err
	}
	sort.Strings(res.Mismatched)
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d objects failed, first: %w", len(res.Failed), res.Failed[0])
	}
	return res, ctx.Err()
}

// hasSignoff reports whether the object at key carries a sign-off by the
// key with primary fingerprint fpr over its indexed bytes.
func hasSignoff(ix *index.Index, key, fpr string) bool {
	for _, s := range ix.Signoffs(key) {
		if s.Fingerprint == fpr {
			return true
		}
	}
	return false
}

// signOne downloads o, checking it against the index's digest and signing
// it in the same pass.
func signOne(ctx context.Context, opt SignOptions, o index.Object) (index.Signoff, error) {
	if ctx.Err() != nil {
		return index.Signoff{}, ctx.Err()
	}
	w := opt.Key.NewWriter()
	if err := readChecked(ctx, opt.Store, o, w); err != nil {
		return index.Signoff{}, err
	}
	sig, err := w.Signature()
	if err != nil {
		return index.Signoff{}, err
	}
	return index.Signoff{Key: o.Key, SHA256: o.SHA256, Fingerprint: opt.Key.Fingerprint(), Signature: sig}, nil
}

// readChecked reads o from store into w and checks its size and SHA-256
// against the index's (an error wrapping ErrDigestMismatch when they
// differ, ErrNoDigest when the index has none).
func readChecked(ctx context.Context, store backend.Store, o index.Object, w io.Writer) error {
	if o.SHA256 == [32]byte{} {
		return ErrNoDigest
	}
	rc, err := store.Open(ctx, o.Key, 0, -1)
	if err != nil {
		return fmt.Errorf("reading %s: %w", store.Location(), err)
	}
	sum, _, n, err := index.Digest(io.TeeReader(rc, w))
	rc.Close()
	if err != nil {
		return fmt.Errorf("reading %s: %w", store.Location(), err)
	}
	if sum != o.SHA256 || n != o.Size {
		return fmt.Errorf("%w of %s: got %d bytes, sha256 %s; the index records %d bytes, sha256 %s",
			ErrDigestMismatch, store.Location(), n, hex.EncodeToString(sum[:]), o.Size, hex.EncodeToString(o.SHA256[:]))
	}
	return nil
}

// Verdicts of Verify, per archive.
const (
	Shown          = "shown"
	DigestMismatch = "digest mismatch"
	Unreadable     = "failed"
)

// VerifyOptions configure Verify.
type VerifyOptions struct {
	Store backend.Store
	Index *index.Index
	// Policy is the store's signature policy (nil: none, only the digests
	// are checked).
	Policy *view.Policy
	Selection
	Jobs     int
	Progress Progress
}

// Verdict is what the mount would do with one archive.
type Verdict struct {
	Key string
	// Status is Shown, view.HiddenUnsigned, view.HiddenBadSig,
	// DigestMismatch or Unreadable.
	Status string
	// Detail says why (empty for a plain Shown): how many keys signed of
	// how many required, which key's signature failed and how, the digest
	// that did not match, the error.
	Detail string
	// Signers are the keyring's keys with a valid signature over the
	// bytes.
	Signers []signing.Signer
}

// OK reports whether the archive is shown with nothing wrong.
func (v Verdict) OK() bool { return v.Status == Shown && v.Detail == "" }

// VerifyResult holds a verdict per selected archive, sorted by key.
type VerifyResult struct {
	Verdicts []Verdict
	Missing  []string // listed names the index does not hold as archives
}

// Verify checks the selected archives of a store as the mount would under
// its policy: each is downloaded and checked against the index's digest,
// and the signatures the mount presents for it (view.Presented: the stored
// .sig, then the sign-offs, of keyring keys) are verified over its bytes
// in the same pass (view.Judge). A bad signature of a keyring key is
// reported even when the policy requires none: the mount would present it
// in the .sig, where bitbake's own SSTATE_VERIFY_SIG would fail on it.
func Verify(ctx context.Context, opt VerifyOptions) (VerifyResult, error) {
	var res VerifyResult
	opt.Jobs, _ = orDefaults(opt.Jobs, nil)
	if opt.Index == nil {
		return res, fmt.Errorf("verify %s: %w", opt.Store.Location(), ErrNoIndex)
	}
	objs, missing := opt.Selection.archives(opt.Index)
	res.Missing = missing
	err := each(ctx, opt.Jobs, objs, func(o index.Object) int64 { return o.Size }, opt.Progress,
		func(ctx context.Context, o index.Object) Verdict { return verifyOne(ctx, opt, o) },
		func(o index.Object, v Verdict) {
			if ctx.Err() == nil {
				res.Verdicts = append(res.Verdicts, v)
			}
		})
	sort.Slice(res.Verdicts, func(i, j int) bool { return res.Verdicts[i].Key < res.Verdicts[j].Key })
	if err != nil {
		return res, err
	}
	return res, ctx.Err()
}

func verifyOne(ctx context.Context, opt VerifyOptions, o index.Object) Verdict {
	v := Verdict{Key: o.Key}
	failed := func(status string, err error) Verdict {
		v.Status, v.Detail = status, err.Error()
		return v
	}
	var sigs []byte
	claimed := 0
	if p := opt.Policy; p != nil && p.Keyring != nil {
		stored, err := storedSig(ctx, opt.Store, opt.Index, o.Key)
		if err != nil {
			return failed(Unreadable, err)
		}
		sigs, claimed = view.Presented(p.Keyring, stored, opt.Index.Signoffs(o.Key))
		if claimed < p.Require {
			// The mount hides it at lookup; its bytes are still checked.
			v.Status = view.HiddenUnsigned
			v.Detail = fmt.Sprintf("%d of the %d required keyring keys signed it", claimed, p.Require)
		}
	}
	var check *signing.Check
	var w io.Writer = io.Discard
	if len(sigs) > 0 {
		check = opt.Policy.Keyring.Prepare(sigs)
		w = check
	}
	if err := readChecked(ctx, opt.Store, o, w); err != nil {
		if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrNoDigest) {
			return failed(DigestMismatch, err)
		}
		return failed(Unreadable, err)
	}
	if v.Status != "" {
		return v
	}
	v.Status = Shown
	if check == nil {
		return v
	}
	var problems []signing.Problem
	v.Signers, problems = check.Result()
	if why := view.Judge(v.Signers, problems, opt.Policy.Require); why != "" {
		if opt.Policy.Require > 0 {
			v.Status = view.HiddenBadSig
		}
		v.Detail = why
	}
	return v
}

// maxSigSize bounds a stored .sig read into memory, as the mount does.
const maxSigSize = 64 << 10

// storedSig reads the .sig the index holds beside the archive at key, nil
// if none.
func storedSig(ctx context.Context, store backend.Store, ix *index.Index, key string) ([]byte, error) {
	o, ok := ix.Lookup(key + ".sig")
	if !ok {
		return nil, nil
	}
	if o.Size > maxSigSize {
		return nil, fmt.Errorf("%s.sig: %d bytes is no signature", key, o.Size)
	}
	rc, err := store.Open(ctx, o.Key, 0, -1)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s.sig: %w", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxSigSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s.sig: %w", key, err)
	}
	return b, nil
}
