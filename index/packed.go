package index

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"math/bits"
	"strings"
)

// packed is the compact form of a sorted run, the one Decode makes: a
// mount holds the snapshot of a store with millions of objects for as long
// as it runs, so this is where the index spends its memory.
//
// Nearly every key is an sstate name,
//
//	[<prefix>/]<h0h1>/<h2h3>/<head><hash><tail>
//
// where hash is 64 lowercase hex digits right after the last ':' of the
// base name (the unihash), h0h1 and h2h3 are its first four digits, head is
// "sstate:<PN>:<arch>:<PV>:<PR>:<pkgarch>:<version>:" and tail
// "_<task>.tar.zst" with any companion suffix (see splitName). Such a key
// is held as its hash in 32 bytes and the id of its template (prefix,
// head, tail), which thousands of objects share: a record of 88 bytes with
// the size, time and digest, against 64 bytes and a key of 150 in a plain
// run. A key of any other shape is kept verbatim. Either way the key comes
// back exactly.
//
// Records are sorted by key, so that iteration, IsDir and Children work as
// on a plain run (binary search, comparing rebuilt keys); Lookup goes
// through a hash table of record positions instead, which costs one
// probe, not twenty comparisons.
type packed struct {
	recs  []prec
	tmpls []nameTmpl
	verb  []string // keys that are not sstate names
	// slots is an open-addressing hash table (linear probing) of the
	// records, a power of two at most two thirds full: 0 for an empty
	// slot, else slotUsed | fingerprint<<slotFPShift | position.
	slots []uint32
}

// prec is one object of a packed run.
type prec struct {
	hash  [32]byte // of a templated key; zero for a verbatim one
	sha   [32]byte
	size  int64
	mtime int64  // unix nanoseconds, noTime for none
	name  uint32 // template id, or verbatimBit | index into verb
}

// nameTmpl is what sstate keys of one template share.
type nameTmpl struct {
	prefix string // "" or ending in "/"
	head   string // ending in ':'
	tail   string
	h      uint64 // tmplHash of the three
}

const (
	verbatimBit = 1 << 31
	hashDigits  = 64

	// A slot holds a position below 2^28 (maxObjects bounds a snapshot),
	// three bits of the key's hash, and a bit telling it from an empty
	// slot, so that most probes of other keys end without reading their
	// record.
	slotPosBits = 28
	slotPosMask = 1<<slotPosBits - 1
	slotFPShift = slotPosBits
	slotUsed    = 1 << 31
	// maxPacked is the most records a packed run can hold.
	maxPacked = 1 << slotPosBits
)

// hashSeed keys the hash table of every packed run of the process.
var hashSeed = maphash.MakeSeed()

// splitName splits an sstate key: key[:pe] is the prefix ("" or ending in
// "/"), key[pe:pe+6] the two hash directories ("ab/cd/"), key[pe+6:at] the
// head (ending in ':'), key[at:at+64] the hash, returned decoded, and
// key[at+64:] the tail. The base name starts after the last '/', and the
// hash right after the base name's last ':'. ok is false for a key of
// another shape, which a packed run keeps verbatim. The split is a
// function of the key alone, and joining the parts gives the key back.
func splitName[K string | []byte](key K) (pe, at int, hash [32]byte, ok bool) {
	// The base name's last ':' is the key's, if no '/' follows it.
	c := lastByte(key, ':')
	if c < 0 || indexByte(key[c+1:], '/') >= 0 {
		return 0, 0, hash, false
	}
	slash := lastByte(key[:c], '/')
	pe = slash - 5
	if pe < 0 || key[pe+2] != '/' || (pe > 0 && key[pe-1] != '/') {
		return 0, 0, hash, false
	}
	at = c + 1
	if len(key)-at < hashDigits {
		return 0, 0, hash, false
	}
	digits := key[at : at+hashDigits]
	if hash, ok = decodeHash(digits); !ok ||
		digits[0] != key[pe] || digits[1] != key[pe+1] || digits[2] != key[pe+3] || digits[3] != key[pe+4] {
		return 0, 0, hash, false
	}
	return pe, at, hash, true
}

// decodeHash decodes 64 lowercase hex digits, eight at a time.
func decodeHash[K string | []byte](s K) (h [32]byte, ok bool) {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	// ge has the high bit of each byte of x that is >= c, for bytes < 0x80.
	ge := func(x uint64, c uint64) uint64 { return (x + (0x80-c)*ones) & high }
	if len(s) != hashDigits {
		return h, false
	}
	var bad uint64
	for k := 0; k < hashDigits/8; k++ {
		b := s[8*k : 8*k+8]
		x := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
		// Each byte must be '0'-'9' or 'a'-'f'.
		digit := ge(x, '0') &^ ge(x, '9'+1)
		letter := ge(x, 'a') &^ ge(x, 'f'+1)
		bad |= x&high | ((digit | letter) ^ high)
		// The value of each digit, 'a' to 'f' having bit 6 set, then
		// two digits a byte.
		v := x&(0x0f*ones) + (x>>6&ones)*9
		v = (v&0x000f000f000f000f)<<4 | (v>>8)&0x000f000f000f000f
		v = (v | v>>8) & 0x0000ffff0000ffff
		binary.LittleEndian.PutUint32(h[4*k:], uint32(v|v>>16))
	}
	return h, bad == 0
}

func indexByte[K string | []byte](s K, c byte) int {
	switch s := any(s).(type) {
	case string:
		return strings.IndexByte(s, c)
	case []byte:
		return bytes.IndexByte(s, c)
	}
	panic("unreachable")
}

// lastByte returns the index of the last c in s, or -1, testing eight
// bytes at a time: names are long, and their parts are found from the end.
func lastByte[K string | []byte](s K, c byte) int {
	const (
		ones = 0x0101010101010101
		low  = 0x7f7f7f7f7f7f7f7f
	)
	i := len(s)
	for ; i >= 8; i -= 8 {
		b := s[i-8 : i]
		x := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
		x ^= uint64(c) * ones
		// The high bit of each byte of x that is zero.
		if z := ^((x&low + low) | x | low); z != 0 {
			return i - 8 + (63-bits.LeadingZeros64(z))>>3
		}
	}
	for i--; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// tmplHash hashes the parts of a template.
func tmplHash(prefix, head, tail string) uint64 {
	return maphash.String(hashSeed, prefix) ^ bits.RotateLeft64(maphash.String(hashSeed, head), 21) ^
		bits.RotateLeft64(maphash.String(hashSeed, tail), 42)
}

// nameHash is the table hash of a templated key: its template's hash and
// its hash digits (maphash.Bytes and maphash.String agree).
func nameHash(th uint64, digits string) uint64 { return th ^ maphash.String(hashSeed, digits) }

// packer builds a packed run from keys in increasing order.
type packer struct {
	p     packed
	ids   map[string]uint32 // template ids by prefix "\x00" head "\x00" tail
	hs    []uint64          // the records' table hashes
	tk    []byte
	arena keyArena
}

func newPacker(capacity int) *packer {
	return &packer{p: packed{recs: make([]prec, 0, capacity)}, ids: map[string]uint32{}, hs: make([]uint64, 0, capacity)}
}

// add appends an object; key must follow the previous one and be valid
// (validKey, so without NUL bytes). The packer keeps no reference to key.
func (b *packer) add(key []byte, size, mtime int64, sha *[32]byte) {
	rec := prec{sha: *sha, size: size, mtime: mtime}
	var h uint64
	if pe, at, hash, ok := splitName(key); ok {
		// Keys hold no NUL, so the template's parts are unambiguous.
		b.tk = append(b.tk[:0], key[:pe]...)
		b.tk = append(b.tk, 0)
		b.tk = append(b.tk, key[pe+6:at]...)
		b.tk = append(b.tk, 0)
		b.tk = append(b.tk, key[at+hashDigits:]...)
		id, found := b.ids[string(b.tk)]
		if !found {
			s := string(b.tk)
			hl := at - pe - 6
			t := nameTmpl{prefix: s[:pe], head: s[pe+1 : pe+1+hl], tail: s[pe+hl+2:]}
			t.h = tmplHash(t.prefix, t.head, t.tail)
			id = uint32(len(b.p.tmpls))
			b.p.tmpls = append(b.p.tmpls, t)
			b.ids[s] = id
		}
		rec.hash, rec.name = hash, id
		h = b.p.tmpls[id].h ^ maphash.Bytes(hashSeed, key[at:at+hashDigits]) // = nameHash
	} else {
		rec.name = verbatimBit | uint32(len(b.p.verb))
		b.p.verb = append(b.p.verb, b.arena.add("", key))
		h = maphash.Bytes(hashSeed, key)
	}
	b.p.recs = append(b.p.recs, rec)
	b.hs = append(b.hs, h)
}

// finish returns the packed run, with its hash table. Unused capacity is
// dropped, as the run stays allocated for the index's lifetime.
func (b *packer) finish() *packed {
	p := b.p
	n := len(p.recs)
	if n > maxPacked {
		panic("index: packed run too long") // Decode rejects such counts first
	}
	p.recs = clip(p.recs)
	p.tmpls = clip(p.tmpls)
	p.verb = clip(p.verb)
	if n == 0 {
		return &p
	}
	size := 1 << bits.Len(uint(n+n/2))
	p.slots = make([]uint32, size)
	mask := uint64(size - 1)
	// Insert the records in the order of their slots, a counting sort
	// by the slots' top bits away: a sweep of the table rather than a
	// cache miss a record.
	const sortBits = 10
	shift := max(bits.Len(uint(mask))-sortBits, 0)
	var start [1<<sortBits + 1]int
	for _, h := range b.hs {
		start[(h&mask)>>shift+1]++
	}
	for k := 1; k < len(start); k++ {
		start[k] += start[k-1]
	}
	type item struct {
		h   uint64
		pos uint32
	}
	order := make([]item, n)
	for i, h := range b.hs {
		k := (h & mask) >> shift
		order[start[k]] = item{h, uint32(i)}
		start[k]++
	}
	b.hs = nil
	for _, it := range order {
		j := it.h & mask
		for p.slots[j] != 0 {
			j = (j + 1) & mask
		}
		p.slots[j] = slotUsed | uint32(it.h>>61)<<slotFPShift | it.pos
	}
	return &p
}

func clip[T any](s []T) []T {
	if cap(s)-len(s) > len(s)/64 {
		return append([]T(nil), s...)
	}
	return s
}

// find returns the position of key.
func (p *packed) find(key string) (int, bool) {
	if len(p.slots) == 0 {
		return 0, false
	}
	pe, at, hash, named := splitName(key)
	var h uint64
	if named {
		h = nameHash(tmplHash(key[:pe], key[pe+6:at], key[at+hashDigits:]), key[at:at+hashDigits])
	} else {
		h = maphash.String(hashSeed, key)
	}
	fp := uint32(h>>61) << slotFPShift
	mask := uint64(len(p.slots) - 1)
	for j := h & mask; ; j = (j + 1) & mask {
		s := p.slots[j]
		if s == 0 {
			return 0, false
		}
		if s&^(slotUsed|slotPosMask) != fp {
			continue
		}
		i := int(s & slotPosMask)
		rec := &p.recs[i]
		if named {
			if rec.name&verbatimBit == 0 && rec.hash == hash {
				if t := &p.tmpls[rec.name]; t.tail == key[at+hashDigits:] && t.head == key[pe+6:at] && t.prefix == key[:pe] {
					return i, true
				}
			}
		} else if rec.name&verbatimBit != 0 && p.verb[rec.name&^verbatimBit] == key {
			return i, true
		}
	}
}

// appendKey appends the key of record i to dst, stopping once dst holds
// limit bytes or more (limit < 0: the whole key).
func (p *packed) appendKey(dst []byte, i, limit int) []byte {
	rec := &p.recs[i]
	if rec.name&verbatimBit != 0 {
		return append(dst, p.verb[rec.name&^verbatimBit]...)
	}
	if limit < 0 {
		limit = MaxKeyLen + 1
	}
	t := &p.tmpls[rec.name]
	dst = append(dst, t.prefix...)
	h := &rec.hash
	dst = append(dst, hexDigits[h[0]>>4], hexDigits[h[0]&0xf], '/', hexDigits[h[1]>>4], hexDigits[h[1]&0xf], '/')
	if len(dst) >= limit {
		return dst
	}
	dst = append(dst, t.head...)
	if len(dst) >= limit {
		return dst
	}
	for _, c := range h {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return append(dst, t.tail...)
}

// key returns the key of record i.
func (p *packed) key(i int) string {
	rec := &p.recs[i]
	if rec.name&verbatimBit != 0 {
		return p.verb[rec.name&^verbatimBit]
	}
	var buf [256]byte
	return string(p.appendKey(buf[:0], i, -1))
}

// cmp compares the key of record i with s, like strings.Compare; with
// prefix, it compares only the first len(s) bytes of the key, so that 0
// means the key starts with s. It compares part by part, and most
// comparisons of a search end in the prefix or the directories.
func (p *packed) cmp(i int, s string, prefix bool) int {
	rec := &p.recs[i]
	if rec.name&verbatimBit != 0 {
		k := p.verb[rec.name&^verbatimBit]
		if prefix && len(k) > len(s) {
			k = k[:len(s)]
		}
		return compare(k, s)
	}
	t := &p.tmpls[rec.name]
	h := &rec.hash
	c, n, done := cmpPart(t.prefix, s, 0, prefix)
	if done {
		return c
	}
	dirs := [6]byte{hexDigits[h[0]>>4], hexDigits[h[0]&0xf], '/', hexDigits[h[1]>>4], hexDigits[h[1]&0xf], '/'}
	if c, n, done = cmpPart(dirs[:], s, n, prefix); done {
		return c
	}
	if c, n, done = cmpPart(t.head, s, n, prefix); done {
		return c
	}
	var digits [hashDigits]byte
	for k, b := range h {
		digits[2*k], digits[2*k+1] = hexDigits[b>>4], hexDigits[b&0xf]
	}
	if c, n, done = cmpPart(digits[:], s, n, prefix); done {
		return c
	}
	if c, n, done = cmpPart(t.tail, s, n, prefix); done {
		return c
	}
	if n < len(s) {
		return -1
	}
	return 0
}

// cmpPart compares part, the bytes of a key from offset n on, with s[n:].
// If that decides how the key compares with s (or, with prefix, with the
// key cut to len(s) bytes), it returns the result and done; otherwise the
// offset after part.
func cmpPart[P string | []byte](part P, s string, n int, prefix bool) (c, next int, done bool) {
	rest := s[n:]
	if len(part) <= len(rest) {
		switch r := rest[:len(part)]; {
		case string(part) == r:
			return 0, n + len(part), false
		case string(part) < r:
			return -1, n, true
		}
		return 1, n, true
	}
	// s ends within part.
	switch head := part[:len(rest)]; {
	case string(head) < rest:
		return -1, n, true
	case string(head) != rest:
		return 1, n, true
	case prefix:
		return 0, n, true
	}
	return 1, n, true // the key is longer
}

// compare is strings.Compare, which lets its arguments escape (Go 1.26):
// that would cost IsDir an allocation.
func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a == b:
		return 0
	}
	return 1
}
