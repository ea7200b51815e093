package index

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Signoff records that the OpenPGP key with fingerprint Fingerprint made
// Signature, a detached signature over the exact bytes of the object Key
// whose SHA-256 is SHA256. The record carries the signature itself, so
// that anyone holding the public key can verify it again; the index never
// verifies it (it knows no keys) and never trusts it: a policy does.
type Signoff struct {
	Key    string   // the object's store key
	SHA256 [32]byte // digest of the bytes signed; never zero
	// Fingerprint is the signing key's fingerprint (of the subkey that
	// made the signature), upper-case hex: 40 digits (OpenPGP v4) or 64
	// (v5, v6).
	Fingerprint string
	// Signature is the binary OpenPGP detached signature (not armored),
	// 1 to MaxSignatureLen bytes. Shared with the index: never change it.
	Signature []byte
	// Created is when the sign-off was recorded (Journal.Signed sets a
	// zero one); the signature holds its own creation time.
	Created time.Time
}

// MaxSignatureLen bounds a sign-off's signature: a detached signature of
// the largest RSA key with a few subpackets is under 1 KiB.
const MaxSignatureLen = 16 << 10

// ErrInvalidSignoff: a sign-off record breaks the rules of
// Signoff.Validate.
var ErrInvalidSignoff = errors.New("invalid sign-off record")

// Validate checks that s is a sign-off the index can hold: a valid object
// key, a non-zero digest, a fingerprint of 40 or 64 upper-case hex digits
// and a signature of 1 to MaxSignatureLen bytes. The error wraps
// ErrInvalidSignoff and names the object, never the signature's bytes.
func (s *Signoff) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: object %s: %s", ErrInvalidSignoff, quoteKey(s.Key), fmt.Sprintf(format, args...))
	}
	switch {
	case !validKey(s.Key):
		return bad("not a valid object key")
	case s.SHA256 == [32]byte{}:
		return bad("no digest")
	case !validFingerprint(s.Fingerprint):
		return bad("fingerprint of %d characters, want 40 or 64 upper-case hex digits", len(s.Fingerprint))
	case len(s.Signature) == 0:
		return bad("no signature")
	case len(s.Signature) > MaxSignatureLen:
		return bad("signature of %d bytes (limit %d)", len(s.Signature), MaxSignatureLen)
	}
	return nil
}

func validFingerprint(fp string) bool {
	if len(fp) != 40 && len(fp) != 64 {
		return false
	}
	for i := 0; i < len(fp); i++ {
		if c := fp[i]; !('0' <= c && c <= '9' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// maxFingerprintBytes bounds a fingerprint in the formats (v5 and v6 keys
// have 32 bytes); maxSignoffLen is the longest encoded sign-off.
const (
	maxFingerprintBytes = 32
	maxSignoffLen       = 3*binary.MaxVarintLen64 + MaxKeyLen + 32 + 1 + maxFingerprintBytes + MaxSignatureLen
	// maxSignoffs bounds the sign-offs a snapshot may declare: a few for
	// every object of the largest store sstatefs is designed for.
	maxSignoffs = 1 << 24
)

// appendSignoff appends s in the form journal segments (record kind 5)
// and snapshots share: uvarint key length, key, 32 bytes SHA-256, a byte L
// and the L bytes of the fingerprint, varint created (unix ns,
// math.MinInt64 = unknown), uvarint signature length, signature. s must
// be valid.
func appendSignoff(b []byte, s *Signoff) []byte {
	b = binary.AppendUvarint(b, uint64(len(s.Key)))
	b = append(b, s.Key...)
	b = append(b, s.SHA256[:]...)
	fp, _ := hex.DecodeString(s.Fingerprint) // valid: checked by the caller
	b = append(b, byte(len(fp)))
	b = append(b, fp...)
	b = binary.AppendVarint(b, toNanos(s.Created))
	b = binary.AppendUvarint(b, uint64(len(s.Signature)))
	return append(b, s.Signature...)
}

// readSignoff reads a sign-off written by appendSignoff; where names it in
// errors ("record 3"). A record that breaks the format's bounds (or has an
// invalid key) is corrupt; a well-formed one may still fail Validate (a
// fingerprint of another length, an empty signature, a zero digest), which
// the caller checks. buf is scratch space, returned for reuse.
func readSignoff(br *bufio.Reader, where string, buf []byte) (Signoff, []byte, error) {
	var s Signoff
	buf, err := readBytes(br, where, "key", MaxKeyLen, buf)
	if err != nil {
		return s, buf, err
	}
	if !validKey(buf) {
		return s, buf, corrupt("%s: invalid key %s", where, quoteKey(buf))
	}
	s.Key = string(buf)
	if _, err := io.ReadFull(br, s.SHA256[:]); err != nil {
		return s, buf, bodyError(where, "sha256", err)
	}
	l, err := br.ReadByte()
	if err != nil {
		return s, buf, bodyError(where, "fingerprint length", err)
	}
	if l > maxFingerprintBytes {
		return s, buf, corrupt("%s: absurd fingerprint length %d (limit %d)", where, l, maxFingerprintBytes)
	}
	var fp [maxFingerprintBytes]byte
	if _, err := io.ReadFull(br, fp[:l]); err != nil {
		return s, buf, bodyError(where, "fingerprint", err)
	}
	s.Fingerprint = strings.ToUpper(hex.EncodeToString(fp[:l]))
	created, err := binary.ReadVarint(br)
	if err != nil {
		return s, buf, bodyError(where, "created", err)
	}
	s.Created = fromNanos(created)
	// Read into buf before allocating: the length is only bounded.
	if buf, err = readBytes(br, where, "signature", MaxSignatureLen, buf); err != nil {
		return s, buf, err
	}
	if len(buf) > 0 {
		s.Signature = bytes.Clone(buf)
	}
	return s, buf, nil
}

// readBytes reads a uvarint length of at most limit and that many bytes
// into buf, and returns them.
func readBytes(br *bufio.Reader, where, what string, limit uint64, buf []byte) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return buf, bodyError(where, what+" length", err)
	}
	if n > limit {
		return buf, corrupt("%s: absurd %s length %d (limit %d)", where, what, n, limit)
	}
	buf = resize(buf, int(n))
	if _, err := io.ReadFull(br, buf); err != nil {
		return buf, bodyError(where, what, err)
	}
	return buf, nil
}

// cmpSignoff orders sign-offs by key, digest and fingerprint: the identity
// of a sign-off (the same key signing the same bytes twice is one).
func cmpSignoff(a, b *Signoff) int {
	if c := strings.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	if c := bytes.Compare(a.SHA256[:], b.SHA256[:]); c != 0 {
		return c
	}
	return strings.Compare(a.Fingerprint, b.Fingerprint)
}

// sigRun is a sorted run of sign-offs (cmpSignoff), each identity once.
// An Index keeps two, like its objects: sigBase from the snapshot,
// sigExtra from journal segments. An index without sign-offs spends
// nothing on them.
type sigRun []Signoff

// keyRange returns the positions of key's sign-offs.
func (r sigRun) keyRange(key string) (int, int) {
	lo, _ := slices.BinarySearchFunc(r, key, func(s Signoff, k string) int { return strings.Compare(s.Key, k) })
	hi := lo
	for hi < len(r) && r[hi].Key == key {
		hi++
	}
	return lo, hi
}

// has reports whether r holds a sign-off of s's identity.
func (r sigRun) has(s *Signoff) bool {
	_, ok := slices.BinarySearchFunc(r, s, func(a Signoff, b *Signoff) int { return cmpSignoff(&a, b) })
	return ok
}

// appendOf appends the sign-offs of key over the bytes with digest sha.
func (r sigRun) appendOf(out []Signoff, key string, sha [32]byte) []Signoff {
	lo, hi := r.keyRange(key)
	for i := lo; i < hi; i++ {
		if r[i].SHA256 == sha {
			out = append(out, r[i])
		}
	}
	return out
}

// mergeSigs merges two sorted runs with disjoint identities.
func mergeSigs(a, b sigRun) sigRun {
	if len(a) == 0 {
		return b
	}
	if len(b) == 0 {
		return a
	}
	out := make(sigRun, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if cmpSignoff(&a[i], &b[j]) < 0 {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

// sigSeen collects the sign-offs apply takes from its segments: the first
// of each identity not already in the index.
type sigSeen struct {
	seen map[string]bool
	add  []Signoff
}

func (s *sigSeen) take(base *Index, sigs []Signoff) {
	for i := range sigs {
		g := &sigs[i]
		if g.Validate() != nil {
			continue // never decoded; a caller's bug
		}
		id := g.Key + "\x00" + string(g.SHA256[:]) + g.Fingerprint
		if s.seen[id] {
			continue
		}
		if s.seen == nil {
			s.seen = map[string]bool{}
		}
		s.seen[id] = true
		if base.sigBase.has(g) || base.sigExtra.has(g) {
			continue
		}
		s.add = append(s.add, *g)
	}
}

// into returns extra with the sign-offs taken.
func (s *sigSeen) into(extra sigRun) sigRun {
	if len(s.add) == 0 {
		return extra
	}
	slices.SortFunc(s.add, func(a, b Signoff) int { return cmpSignoff(&a, &b) })
	return mergeSigs(extra, s.add)
}

// Signoffs returns the sign-offs of the object at key that are over its
// bytes: those whose digest is the object's. A sign-off of other bytes
// (another writer's object under the same name) never counts, nor does one
// of an object the index does not hold or holds without a digest. Sorted
// by fingerprint; nil if none. The signatures are shared with the index:
// never change them.
func (ix *Index) Signoffs(key string) []Signoff {
	if ix == nil {
		return nil
	}
	blo, bhi := ix.sigBase.keyRange(key)
	elo, ehi := ix.sigExtra.keyRange(key)
	if blo == bhi && elo == ehi {
		return nil // the common case: no object lookup
	}
	o, ok := ix.Lookup(key)
	if !ok || o.SHA256 == ([32]byte{}) {
		return nil
	}
	out := ix.sigBase.appendOf(nil, key, o.SHA256)
	n := len(out)
	out = ix.sigExtra.appendOf(out, key, o.SHA256)
	if n > 0 && n < len(out) {
		slices.SortFunc(out, func(a, b Signoff) int { return strings.Compare(a.Fingerprint, b.Fingerprint) })
	}
	return out
}

// EachSignoff calls fn with each sign-off that counts (see Signoffs), in
// order of key, digest and fingerprint, until fn returns false. Its
// signature is an iter.Seq, so `for s := range ix.EachSignoff` works. It
// looks up the object of each key that has sign-offs.
func (ix *Index) EachSignoff(fn func(Signoff) bool) {
	if ix == nil {
		return
	}
	ix.eachSignoff(func(s *Signoff) bool { return fn(*s) })
}

// NumSignoffs is the number of sign-offs that count (see Signoffs). It
// walks them, as EachSignoff does.
func (ix *Index) NumSignoffs() int {
	n := 0
	ix.EachSignoff(func(Signoff) bool { n++; return true })
	return n
}

// eachSignoff walks the sign-offs that count, merging both runs.
func (ix *Index) eachSignoff(fn func(*Signoff) bool) {
	a, b := ix.sigBase, ix.sigExtra
	var (
		key string
		sha [32]byte
		has bool
	)
	for len(a) > 0 || len(b) > 0 {
		var s *Signoff
		if len(b) == 0 || len(a) > 0 && cmpSignoff(&a[0], &b[0]) < 0 {
			s, a = &a[0], a[1:]
		} else {
			s, b = &b[0], b[1:]
		}
		if s.Key != key {
			key = s.Key
			o, ok := ix.Lookup(key)
			sha, has = o.SHA256, ok && o.SHA256 != [32]byte{}
		}
		if has && s.SHA256 == sha && !fn(s) {
			return
		}
	}
}

// countingSignoffs returns the sign-offs that count, in order: what a
// snapshot keeps.
func (ix *Index) countingSignoffs() []Signoff {
	var out []Signoff
	ix.eachSignoff(func(s *Signoff) bool { out = append(out, *s); return true })
	return out
}

// decodeSignoffs reads the count sign-offs of a snapshot, strictly
// increasing, and returns the valid ones with the number dropped as
// invalid.
func decodeSignoffs(br *bufio.Reader, count, bodyLen uint64) (sigRun, int, error) {
	var (
		out     = make(sigRun, 0, min(count, bodyLen/64+16))
		buf     = make([]byte, 0, 1024)
		prev    Signoff
		invalid int
	)
	for i := uint64(0); i < count; i++ {
		where := fmt.Sprintf("sign-off %d", i)
		if _, err := br.Peek(1); errors.Is(err, io.EOF) {
			return nil, 0, corrupt("sign-off count mismatch: header says %d, body ends after %d", count, i)
		}
		s, b, err := readSignoff(br, where, buf)
		buf = b
		if err != nil {
			return nil, 0, err
		}
		if i > 0 && cmpSignoff(&prev, &s) >= 0 {
			return nil, 0, corrupt("sign-offs not strictly increasing: %d (object %s) follows object %s", i, quoteKey(s.Key), quoteKey(prev.Key))
		}
		prev = s
		if s.Validate() != nil {
			invalid++
			continue
		}
		out = append(out, s)
	}
	return slices.Clip(out), invalid, nil
}

// maxBatchSignoffBytes closes a journal batch early when its signatures
// add up to this much, so that a segment stays under the format's body
// limit even with MaxBatch large sign-offs.
const maxBatchSignoffBytes = 4 << 20

// isFull reports whether batch b is to be written without waiting for
// more: it holds maxBatch records (objects, equivalences and sign-offs),
// or signatures of maxBatchSignoffBytes.
func (b *batch) isFull(maxBatch int) bool {
	if len(b.objs)+len(b.eqs)+len(b.sigs) >= maxBatch {
		return true
	}
	n := 0
	for i := range b.sigs {
		n += len(b.sigs[i].Signature)
	}
	return n >= maxBatchSignoffBytes
}

// Signed records the sign-off s in the store's index journal; a zero
// Created is set to the journal's clock. Like Added, it returns once a
// segment holding the record is in the store (batched with other Added,
// Reported and Signed calls), or with an error: the caller retries (a
// record written twice does no harm: readers keep the first of a key,
// digest and fingerprint). A record that fails Signoff.Validate is not
// recorded; the error wraps ErrInvalidSignoff.
//
// The journal does not verify the signature: whoever reads it does, with
// the keys they trust. The record counts for the object only while the
// index holds it with digest s.SHA256 (Index.Signoffs).
func (j *Journal) Signed(ctx context.Context, s Signoff) error {
	if s.Created.IsZero() {
		s.Created = j.now()
	}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("index journal: sign-off not recorded: %w", err)
	}
	return j.enqueue(ctx, false, func(b *batch) { b.sigs = append(b.sigs, s) })
}

// Signed adds s to the open batch, as Journal.Signed does, without waiting
// for its segment: Flush reports whether it was written (for commands that
// sign many objects).
func (l *Later) Signed(s Signoff) error {
	if s.Created.IsZero() {
		s.Created = l.j.now()
	}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("index journal: sign-off not recorded: %w", err)
	}
	b := l.j.add(context.Background(), false, func(b *batch) { b.sigs = append(b.sigs, s) })
	l.mu.Lock()
	l.batches[b] = struct{}{}
	l.mu.Unlock()
	return nil
}
