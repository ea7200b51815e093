package index

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Equivalence is one hash equivalence record: a row of bitbake-hashserv's
// unihashes_v3 joined with its outhashes_v2 row (on method, taskhash). It
// is the one type the index stores, hashserv serves and hashimport reads.
type Equivalence struct {
	// Method is what bitbake reports as the method: the outhash function
	// (SSTATE_HASHEQUIV_METHOD, "oe.sstatesig.OEOuthashBasic" in OE-core),
	// to which a signature generator may append a per-task suffix
	// (siggen's extramethod; OE-core appends none). It is no task name;
	// the protocol treats it as an opaque string.
	Method   string
	Taskhash string // lowercase hex
	// Outhash is "" when there is no output hash for the unihash
	// (report-equiv, a backfill from an upstream, outhashes cleaned).
	Outhash string
	Unihash string // lowercase hex; 64 characters (SHA-256) in current bitbake
	// PN, PV, PR and Task describe the reporting task; empty when not reported.
	PN, PV, PR, Task string
	Owner            string // the reporting user; empty without authentication
	// Created is when the outhash was reported, in UTC; zero when there is
	// no outhash row or it has no time.
	Created time.Time
}

// ErrInvalidEquivalence: an equivalence record breaks the rules Validate
// checks.
var ErrInvalidEquivalence = errors.New("invalid equivalence record")

const (
	// minHashLen and maxHashLen bound the hex digits of a hash. bitbake's
	// hashes are SHA-256 (64 digits); the bounds leave room for others.
	minHashLen = 4
	maxHashLen = 128
	// maxMethodLen and maxFieldLen bound Method and the other strings.
	maxMethodLen = 1024
	maxFieldLen  = 256
)

// Validate reports whether e can be recorded: Method is 1 to 1024 bytes,
// PN, PV, PR, Task and Owner at most 256 bytes, all valid UTF-8 without
// control characters; Taskhash and Unihash are 4 to 128 lowercase hex
// digits, Outhash too or empty. The error wraps ErrInvalidEquivalence.
func (e Equivalence) Validate() error {
	bad := func(field, val, why string) error {
		return fmt.Errorf("%w: %s %s: %s", ErrInvalidEquivalence, field, quoteKey(val), why)
	}
	switch {
	case e.Method == "":
		return fmt.Errorf("%w: empty method", ErrInvalidEquivalence)
	case !validText(e.Method, maxMethodLen):
		return bad("method", e.Method, "longer than 1024 bytes, not UTF-8 or with control characters")
	case !validHash(e.Taskhash):
		return bad("taskhash", e.Taskhash, "not 4 to 128 lowercase hex digits")
	case e.Outhash != "" && !validHash(e.Outhash):
		return bad("outhash", e.Outhash, "not 4 to 128 lowercase hex digits")
	case !validHash(e.Unihash):
		return bad("unihash", e.Unihash, "not 4 to 128 lowercase hex digits")
	}
	for _, f := range [...]struct{ name, val string }{
		{"PN", e.PN}, {"PV", e.PV}, {"PR", e.PR}, {"task", e.Task}, {"owner", e.Owner},
	} {
		if !validText(f.val, maxFieldLen) {
			return bad(f.name, f.val, "longer than 256 bytes, not UTF-8 or with control characters")
		}
	}
	return nil
}

// validText reports whether s is at most max bytes of UTF-8 without
// control characters.
func validText(s string, max int) bool {
	if len(s) > max {
		return false
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || (r >= 0x80 && r < 0xa0) {
			return false
		}
		i += n
	}
	return true
}

// validHash reports whether h is minHashLen to maxHashLen lowercase hex
// digits.
func validHash(h string) bool {
	if len(h) < minHashLen || len(h) > maxHashLen {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Hashes are kept packed, two hex digits a byte, high nibble first; an odd
// count leaves the low nibble of the last byte zero. Comparing packed
// hashes (cmpPacked) gives the order of their hex strings.

func packedLen(digits int) int { return (digits + 1) / 2 }

func nibble(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}

// appendPacked appends the packed form of h, which must be lowercase hex.
func appendPacked(dst []byte, h string) []byte {
	i := 0
	for ; i+1 < len(h); i += 2 {
		dst = append(dst, nibble(h[i])<<4|nibble(h[i+1]))
	}
	if i < len(h) {
		dst = append(dst, nibble(h[i])<<4)
	}
	return dst
}

const hexDigits = "0123456789abcdef"

// unpack returns the hex string of digits packed in b.
func unpack(b []byte, digits int) string {
	if digits == 0 {
		return ""
	}
	var s strings.Builder
	s.Grow(digits)
	for i := range digits {
		x := b[i/2]
		if i%2 == 0 {
			x >>= 4
		}
		s.WriteByte(hexDigits[x&15])
	}
	return s.String()
}

// cmpPacked compares two packed hashes as their hex strings compare.
func cmpPacked(a []byte, na int, b []byte, nb int) int {
	n := min(na, nb)
	if c := bytes.Compare(a[:n/2], b[:n/2]); c != 0 {
		return c
	}
	if n%2 == 1 {
		if c := cmp.Compare(a[n/2]>>4, b[n/2]>>4); c != 0 {
			return c
		}
	}
	return cmp.Compare(na, nb)
}

// query is a hash being looked up, packed on the caller's stack.
type query struct {
	b [maxHashLen / 2]byte
	n int
}

func (q *query) packed() []byte { return q.b[:packedLen(q.n)] }

// packQuery packs h; ok is false if h is not a hash the index can hold.
func packQuery(h string) (q query, ok bool) {
	if !validHash(h) {
		return q, false
	}
	appendPacked(q.b[:0], h)
	q.n = len(h)
	return q, true
}

// Flags of an equivalence record, in memory and in the snapshot.
const (
	// eqWinner: the first record of its (method, taskhash): the mapping
	// to its unihash is the one in force.
	eqWinner = 1 << 0
	// eqFirstOut: the first record of its (method, outhash): reports of
	// the same output are matched against it.
	eqFirstOut = 1 << 1
	// eqSameUnihash: the unihash is the taskhash (bitbake's default), so
	// it is not stored again.
	eqSameUnihash = 1 << 2
	eqFlagsKnown  = eqWinner | eqFirstOut | eqSameUnihash
)

// eqEntry is the in-memory form of an Equivalence: 40 bytes, plus its
// packed hashes in the run's arena (64 bytes for a record with an outhash
// and unihash = taskhash, 96 with another unihash). Strings are ids into
// the run's table of distinct strings.
type eqEntry struct {
	created int64  // unix nanoseconds, noTime for the zero time
	off     uint32 // arena offset of the taskhash, the outhash and (unless eqSameUnihash) the unihash
	method  uint32
	pn, pv  uint32
	pr      uint32
	task    uint32
	owner   uint32
	tn, on  uint8 // hex digits of the taskhash and the outhash (0: none)
	un      uint8 // hex digits of the unihash
	flags   uint8
}

// eqRun holds equivalence records sorted by (taskhash, method), a winner
// before the other records of its key, those by outhash. A run keeps only
// records that play a part: winners, and records that are the first of
// their (method, outhash) although another record of their taskhash won.
type eqRun struct {
	es   []eqEntry
	hex  []byte   // packed hashes
	strs []string // interned strings by id; strs[0] is ""
	// byOut lists the eqFirstOut entries by (method, outhash), byUni the
	// winners by unihash.
	byOut, byUni []uint32
	winners      int
}

func (r *eqRun) taskhash(e *eqEntry) []byte {
	return r.hex[e.off : int(e.off)+packedLen(int(e.tn))]
}

func (r *eqRun) outhash(e *eqEntry) []byte {
	o := int(e.off) + packedLen(int(e.tn))
	return r.hex[o : o+packedLen(int(e.on))]
}

func (r *eqRun) unihash(e *eqEntry) []byte {
	if e.flags&eqSameUnihash != 0 {
		return r.taskhash(e)
	}
	o := int(e.off) + packedLen(int(e.tn)) + packedLen(int(e.on))
	return r.hex[o : o+packedLen(int(e.un))]
}

func (r *eqRun) equivalence(e *eqEntry) Equivalence { return r.equivalenceOf(e, "") }

// equivalenceOf is equivalence with the taskhash th already known (""
// if not), which saves unpacking it.
func (r *eqRun) equivalenceOf(e *eqEntry, th string) Equivalence {
	if th == "" {
		th = unpack(r.taskhash(e), int(e.tn))
	}
	uh := th
	if e.flags&eqSameUnihash == 0 {
		uh = unpack(r.unihash(e), int(e.un))
	}
	return Equivalence{
		Method: r.strs[e.method], Taskhash: th, Outhash: unpack(r.outhash(e), int(e.on)), Unihash: uh,
		PN: r.strs[e.pn], PV: r.strs[e.pv], PR: r.strs[e.pr], Task: r.strs[e.task], Owner: r.strs[e.owner],
		Created: fromNanos(e.created),
	}
}

// cmpEq orders entries, of one run or two: by taskhash, method, the winner
// first, then by outhash.
func cmpEq(ra *eqRun, a *eqEntry, rb *eqRun, b *eqEntry) int {
	if c := cmpPacked(ra.taskhash(a), int(a.tn), rb.taskhash(b), int(b.tn)); c != 0 {
		return c
	}
	if c := strings.Compare(ra.strs[a.method], rb.strs[b.method]); c != 0 {
		return c
	}
	if c := cmp.Compare(b.flags&eqWinner, a.flags&eqWinner); c != 0 {
		return c
	}
	return cmpPacked(ra.outhash(a), int(a.on), rb.outhash(b), int(b.on))
}

// cmpKey compares entry e with (taskhash th, method).
func (r *eqRun) cmpKey(e *eqEntry, th []byte, tn int, method string) int {
	if c := cmpPacked(r.taskhash(e), int(e.tn), th, tn); c != 0 {
		return c
	}
	return strings.Compare(r.strs[e.method], method)
}

// cmpOut orders byOut: by method, then outhash.
func (r *eqRun) cmpOut(a, b *eqEntry) int {
	if c := strings.Compare(r.strs[a.method], r.strs[b.method]); c != 0 {
		return c
	}
	return cmpPacked(r.outhash(a), int(a.on), r.outhash(b), int(b.on))
}

// lowerBound returns the first position in [0, n) where less is false;
// less must be true for a prefix of the positions.
func lowerBound(n int, less func(int) bool) int {
	lo, hi := 0, n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if less(m) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// winner returns the winner of (method, taskhash th).
func (r *eqRun) winner(method string, th []byte, tn int) (*eqEntry, bool) {
	i := lowerBound(len(r.es), func(i int) bool { return r.cmpKey(&r.es[i], th, tn, method) < 0 })
	if i < len(r.es) && r.cmpKey(&r.es[i], th, tn, method) == 0 && r.es[i].flags&eqWinner != 0 {
		return &r.es[i], true
	}
	return nil, false
}

// firstWinner returns the winner with taskhash th of the smallest method.
func (r *eqRun) firstWinner(th []byte, tn int) (*eqEntry, bool) {
	same := func(i int) int { return cmpPacked(r.taskhash(&r.es[i]), int(r.es[i].tn), th, tn) }
	for i := lowerBound(len(r.es), func(i int) bool { return same(i) < 0 }); i < len(r.es) && same(i) == 0; i++ {
		if r.es[i].flags&eqWinner != 0 {
			return &r.es[i], true
		}
	}
	return nil, false
}

// firstOut returns the first record of (method, outhash oh).
func (r *eqRun) firstOut(method string, oh []byte, on int) (*eqEntry, bool) {
	c := func(i int) int {
		e := &r.es[r.byOut[i]]
		if c := strings.Compare(r.strs[e.method], method); c != 0 {
			return c
		}
		return cmpPacked(r.outhash(e), int(e.on), oh, on)
	}
	if i := lowerBound(len(r.byOut), func(i int) bool { return c(i) < 0 }); i < len(r.byOut) && c(i) == 0 {
		return &r.es[r.byOut[i]], true
	}
	return nil, false
}

// knowsUnihash reports whether a winner maps to unihash uh.
func (r *eqRun) knowsUnihash(uh []byte, un int) bool {
	c := func(i int) int {
		e := &r.es[r.byUni[i]]
		return cmpPacked(r.unihash(e), int(e.un), uh, un)
	}
	i := lowerBound(len(r.byUni), func(i int) bool { return c(i) < 0 })
	return i < len(r.byUni) && c(i) == 0
}

// index builds byOut, byUni and winners from the sorted entries.
func (r *eqRun) index() {
	var outs, unis []uint32
	for i := range r.es {
		if r.es[i].flags&eqWinner != 0 {
			unis = append(unis, uint32(i))
		}
		if r.es[i].flags&eqFirstOut != 0 {
			outs = append(outs, uint32(i))
		}
	}
	r.winners = len(unis)
	r.byOut, r.byUni = r.sortByOut(outs), r.sortByUni(unis)
}

// posKey is a position in a run with the start of the hash it is sorted
// by: sorting these touches no arena, except to break ties.
type posKey struct {
	rank uint32 // of the method (byOut)
	pos  uint32
	k    uint64 // the first 16 digits, as they compare
}

func prefix64(b []byte) uint64 {
	var x [8]byte
	copy(x[:], b)
	return binary.BigEndian.Uint64(x[:])
}

func (r *eqRun) cmpUni(a, b uint32) int {
	ea, eb := &r.es[a], &r.es[b]
	return cmpPacked(r.unihash(ea), int(ea.un), r.unihash(eb), int(eb.un))
}

func (r *eqRun) cmpOutPos(a, b uint32) int { return r.cmpOut(&r.es[a], &r.es[b]) }

// sortByUni sorts positions of winners by unihash.
func (r *eqRun) sortByUni(ps []uint32) []uint32 {
	return r.sortPositions(ps, func(e *eqEntry) []byte { return r.unihash(e) }, nil, r.cmpUni)
}

// sortByOut sorts positions of first records of outhashes by method, then
// outhash.
func (r *eqRun) sortByOut(ps []uint32) []uint32 {
	ranks := map[uint32]uint32{}
	for _, p := range ps {
		ranks[r.es[p].method] = 0
	}
	ids := slices.Collect(maps.Keys(ranks))
	slices.SortFunc(ids, func(a, b uint32) int { return strings.Compare(r.strs[a], r.strs[b]) })
	for i, id := range ids {
		ranks[id] = uint32(i)
	}
	return r.sortPositions(ps, func(e *eqEntry) []byte { return r.outhash(e) }, ranks, r.cmpOutPos)
}

func (r *eqRun) sortPositions(ps []uint32, hash func(*eqEntry) []byte, ranks map[uint32]uint32, tie func(a, b uint32) int) []uint32 {
	if len(ps) == 0 {
		return nil
	}
	items := make([]posKey, len(ps))
	for i, p := range ps {
		e := &r.es[p]
		items[i] = posKey{pos: p, k: prefix64(hash(e))}
		if ranks != nil {
			items[i].rank = ranks[e.method]
		}
	}
	slices.SortFunc(items, func(a, b posKey) int {
		if a.rank != b.rank {
			return cmp.Compare(a.rank, b.rank)
		}
		if a.k != b.k {
			return cmp.Compare(a.k, b.k)
		}
		return tie(a.pos, b.pos)
	})
	out := make([]uint32, len(items))
	for i := range items {
		out[i] = items[i].pos
	}
	return out
}

// eqBuilder makes a run: an existing one plus new records. The existing
// run is not changed; its entries are merged with the new ones, which
// costs a copy rather than a sort of all.
type eqBuilder struct {
	old  *eqRun
	hex  []byte   // old.hex, then the new records' hashes
	strs []string // old.strs, then new strings
	ids  map[string]uint32
	es   []eqEntry // the new records
}

func newEqBuilder(old *eqRun, more int) *eqBuilder {
	b := &eqBuilder{old: old, ids: make(map[string]uint32, len(old.strs)+8), es: make([]eqEntry, 0, more)}
	b.hex = make([]byte, len(old.hex), len(old.hex)+more*packedLen(3*64))
	copy(b.hex, old.hex)
	b.strs = make([]string, 1, max(len(old.strs), 1)+8)
	if len(old.strs) > 1 {
		b.strs = append(b.strs, old.strs[1:]...)
	}
	for id, s := range b.strs {
		b.ids[s] = uint32(id)
	}
	return b
}

func (b *eqBuilder) intern(s string) uint32 {
	if id, ok := b.ids[s]; ok {
		return id
	}
	s = strings.Clone(s) // not a piece of some larger buffer of the caller's
	id := uint32(len(b.strs))
	b.strs = append(b.strs, s)
	b.ids[s] = id
	return id
}

// add adds a valid record with flags eqWinner and eqFirstOut as given.
// It returns false if the run is full (4 GiB of hashes, far beyond any
// real store).
func (b *eqBuilder) add(e *Equivalence, flags uint8) bool {
	if len(b.hex) > math.MaxUint32-3*maxHashLen {
		return false
	}
	ent := eqEntry{
		created: toNanos(e.Created), off: uint32(len(b.hex)),
		tn: uint8(len(e.Taskhash)), on: uint8(len(e.Outhash)), un: uint8(len(e.Unihash)), flags: flags,
		method: b.intern(e.Method), pn: b.intern(e.PN), pv: b.intern(e.PV), pr: b.intern(e.PR),
		task: b.intern(e.Task), owner: b.intern(e.Owner),
	}
	b.hex = appendPacked(b.hex, e.Taskhash)
	b.hex = appendPacked(b.hex, e.Outhash)
	if e.Unihash == e.Taskhash {
		ent.flags |= eqSameUnihash
	} else {
		b.hex = appendPacked(b.hex, e.Unihash)
	}
	b.es = append(b.es, ent)
	return true
}

// finish sorts the new records and merges them, and their lookup tables,
// with the old run's.
func (b *eqBuilder) finish() eqRun {
	r := eqRun{hex: b.hex, strs: b.strs}
	add, old := b.es, b.old.es
	slices.SortFunc(add, func(x, y eqEntry) int { return cmpEq(&r, &x, &r, &y) })
	r.es = make([]eqEntry, 0, len(old)+len(add))
	oldAt := make([]uint32, len(old)) // where each old entry went
	var outs, unis []uint32           // where the new ones went, by table
	for i, j := 0, 0; i < len(old) || j < len(add); {
		if j == len(add) || (i < len(old) && cmpEq(&r, &old[i], &r, &add[j]) < 0) {
			oldAt[i] = uint32(len(r.es))
			r.es = append(r.es, old[i])
			i++
			continue
		}
		p := uint32(len(r.es))
		if add[j].flags&eqWinner != 0 {
			unis = append(unis, p)
		}
		if add[j].flags&eqFirstOut != 0 {
			outs = append(outs, p)
		}
		r.es = append(r.es, add[j])
		j++
	}
	remap := func(ps []uint32) []uint32 {
		out := make([]uint32, len(ps))
		for i, p := range ps {
			out[i] = oldAt[p]
		}
		return out
	}
	r.byUni = mergePositions(remap(b.old.byUni), r.sortByUni(unis), r.cmpUni)
	r.byOut = mergePositions(remap(b.old.byOut), r.sortByOut(outs), r.cmpOutPos)
	r.winners = b.old.winners + len(unis)
	return r
}

// mergePositions merges two sorted lists of positions.
func mergePositions(a, b []uint32, cmp func(x, y uint32) int) []uint32 {
	if len(b) == 0 {
		return a
	}
	out := make([]uint32, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if cmp(a[i], b[j]) < 0 {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	return append(append(out, a[i:]...), b[j:]...)
}

// runs returns the equivalence runs of ix: the snapshot's, then the
// journal's. A record in the first beats one in the second.
func (ix *Index) runs() [2]*eqRun { return [2]*eqRun{&ix.eqBase, &ix.eqExtra} }

// Equivalence returns the record in force for (method, taskhash): the
// first one reported (see the merge rules in merge.go).
func (ix *Index) Equivalence(method, taskhash string) (Equivalence, bool) {
	q, ok := packQuery(taskhash)
	if ix == nil || !ok {
		return Equivalence{}, false
	}
	for _, r := range ix.runs() {
		if e, ok := r.winner(method, q.packed(), q.n); ok {
			return r.equivalenceOf(e, taskhash), true
		}
	}
	return Equivalence{}, false
}

// ByTaskhash returns the record in force for taskhash under any method;
// of several, that of the smallest method (bytewise).
func (ix *Index) ByTaskhash(taskhash string) (Equivalence, bool) {
	q, ok := packQuery(taskhash)
	if ix == nil || !ok {
		return Equivalence{}, false
	}
	var (
		best  *eqEntry
		bestR *eqRun
	)
	for _, r := range ix.runs() {
		if e, ok := r.firstWinner(q.packed(), q.n); ok &&
			(best == nil || r.strs[e.method] < bestR.strs[best.method]) {
			best, bestR = e, r
		}
	}
	if best == nil {
		return Equivalence{}, false
	}
	return bestR.equivalence(best), true
}

// ByOuthash returns the first record reported with (method, outhash), as
// bitbake matches a report against earlier ones of the same output. Its
// Unihash is the one in force for its taskhash (as bitbake's join of its
// two tables gives), which differs from the one reported with it when
// another record of its taskhash came first.
func (ix *Index) ByOuthash(method, outhash string) (Equivalence, bool) {
	q, ok := packQuery(outhash)
	if ix == nil || !ok {
		return Equivalence{}, false
	}
	for _, r := range ix.runs() {
		e, ok := r.firstOut(method, q.packed(), q.n)
		if !ok {
			continue
		}
		out := r.equivalence(e)
		if e.flags&eqWinner == 0 {
			for _, w := range ix.runs() {
				if we, ok := w.winner(out.Method, r.taskhash(e), int(e.tn)); ok {
					out.Unihash = unpack(w.unihash(we), int(we.un))
					break
				}
			}
		}
		return out, true
	}
	return Equivalence{}, false
}

// UnihashKnown reports whether some record in force maps to unihash
// (bitbake's exists-stream).
func (ix *Index) UnihashKnown(unihash string) bool {
	q, ok := packQuery(unihash)
	if ix == nil || !ok {
		return false
	}
	return ix.eqBase.knowsUnihash(q.packed(), q.n) || ix.eqExtra.knowsUnihash(q.packed(), q.n)
}

// Equivalences calls fn for each record in force, by taskhash and then
// method, until fn returns false. Its signature is an iter.Seq.
func (ix *Index) Equivalences(fn func(Equivalence) bool) {
	if ix == nil {
		return
	}
	ix.eachEq(func(r *eqRun, e *eqEntry) bool {
		if e.flags&eqWinner == 0 {
			return true
		}
		return fn(r.equivalence(e))
	})
}

// eachEq calls fn for every entry of both runs (records in force and
// those kept for their outhash) in the order of cmpEq, until fn returns
// false.
func (ix *Index) eachEq(fn func(r *eqRun, e *eqEntry) bool) {
	a, b := &ix.eqBase, &ix.eqExtra
	i, j := 0, 0
	for i < len(a.es) || j < len(b.es) {
		if j == len(b.es) || (i < len(a.es) && cmpEq(a, &a.es[i], b, &b.es[j]) < 0) {
			if !fn(a, &a.es[i]) {
				return
			}
			i++
		} else {
			if !fn(b, &b.es[j]) {
				return
			}
			j++
		}
	}
}

// hasWinner reports whether a record is in force for (method, taskhash).
func (ix *Index) hasWinner(method, taskhash string) bool {
	q, ok := packQuery(taskhash)
	if !ok {
		return false
	}
	for _, r := range ix.runs() {
		if _, ok := r.winner(method, q.packed(), q.n); ok {
			return true
		}
	}
	return false
}

// hasFirstOut reports whether a record of (method, outhash) is known.
func (ix *Index) hasFirstOut(method, outhash string) bool {
	q, ok := packQuery(outhash)
	if !ok {
		return false
	}
	for _, r := range ix.runs() {
		if _, ok := r.firstOut(method, q.packed(), q.n); ok {
			return true
		}
	}
	return false
}

// NumEquivalences is the number of records in force: one per (method,
// taskhash).
func (ix *Index) NumEquivalences() int {
	if ix == nil {
		return 0
	}
	return ix.eqBase.winners + ix.eqExtra.winners
}

// numEqEntries counts every kept record, for the snapshot header.
func (ix *Index) numEqEntries() int { return len(ix.eqBase.es) + len(ix.eqExtra.es) }
