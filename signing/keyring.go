package signing

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Key names a public key without any secret: its primary fingerprint and
// long key id, both in upper-case hex as gpg prints them.
type Key struct {
	// Fingerprint of the primary key (40 hex digits for v4 keys, 64 for v6).
	Fingerprint string
	// KeyID is the long key id of the primary key (16 hex digits), the
	// form SSTATE_VALID_SIGS and gpg's GOODSIG status line use.
	KeyID string
}

func (k Key) String() string { return k.Fingerprint }

func keyOf(e *openpgp.Entity) Key {
	return Key{
		Fingerprint: upperHex(e.PrimaryKey.Fingerprint),
		KeyID:       fmt.Sprintf("%016X", e.PrimaryKey.KeyId),
	}
}

func upperHex(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

// Keyring is a set of accepted public keys. It is immutable once loaded
// and safe for concurrent use.
type Keyring struct {
	entities openpgp.EntityList
}

// LoadKeyring reads public keys from each path: a file of armored or binary
// OpenPGP public keys (several keys per file are fine, as `gpg --export`
// writes them), or a directory, of which every regular file directly in it
// is read. In a directory, names starting with "." (editor and VCS files)
// are skipped and subdirectories are not descended. A file that does not
// parse, or that holds a secret key, is an error naming the file; so is a
// keyring without any key.
func LoadKeyring(paths ...string) (*Keyring, error) {
	var files []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		for _, de := range entries {
			if strings.HasPrefix(de.Name(), ".") {
				continue
			}
			full := filepath.Join(p, de.Name())
			// Follow symlinks (a directory of links to keys is common), but
			// read regular files only.
			st, err := os.Stat(full)
			if err != nil {
				return nil, fmt.Errorf("keyring: %w", err)
			}
			if st.Mode().IsRegular() {
				files = append(files, full)
			}
		}
	}
	kr := &Keyring{}
	for _, f := range files {
		el, err := readKeyFile(f)
		if err != nil {
			return nil, fmt.Errorf("keyring %w", err)
		}
		for _, e := range el {
			if e.PrivateKey != nil {
				return nil, fmt.Errorf("keyring %s: %w", f, ErrSecretInKeyring)
			}
		}
		kr.entities = append(kr.entities, el...)
	}
	if len(kr.entities) == 0 {
		return nil, fmt.Errorf("keyring %s: %w", strings.Join(paths, ", "), ErrEmptyKeyring)
	}
	return kr, nil
}

// readKeyFile reads the keys of a file; its error names the file.
func readKeyFile(file string) (openpgp.EntityList, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		// *PathError already names the file.
		return nil, err
	}
	el, err := parseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return el, nil
}

// parseKeys parses armored or binary OpenPGP keys (public or secret). An
// armored input may hold several armor blocks one after the other. The
// error wraps ErrBadKeyFile and never quotes the input.
func parseKeys(data []byte) (openpgp.EntityList, error) {
	var el openpgp.EntityList
	err := eachPacketBlock(data, func(r io.Reader) error {
		// Not openpgp.ReadKeyRing: it skips keys it cannot read, and a
		// keyring that silently lost a key is a policy that silently
		// changed.
		packets := packet.NewReader(r)
		for {
			e, err := openpgp.ReadEntity(packets)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			el = append(el, e)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKeyFile, err)
	}
	if len(el) == 0 {
		return nil, ErrBadKeyFile
	}
	return el, nil
}

var armorStart = []byte("-----BEGIN PGP ")

// eachPacketBlock calls fn with the binary packets of data: data itself
// when it is binary, else the body of each armor block in turn (armor.Decode
// reads through a buffer, so each block is decoded from its own offset).
func eachPacketBlock(data []byte, fn func(io.Reader) error) error {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if !bytes.HasPrefix(trimmed, armorStart) {
		return fn(bytes.NewReader(data))
	}
	rest := trimmed
	for {
		i := bytes.Index(rest, armorStart)
		if i < 0 {
			return nil
		}
		rest = rest[i:]
		block, err := armor.Decode(bytes.NewReader(rest))
		if err != nil {
			return fmt.Errorf("armor: %w", err)
		}
		if err := fn(block.Body); err != nil {
			return err
		}
		// Move past this block's header before looking for the next one.
		rest = rest[len(armorStart):]
		end := bytes.Index(rest, []byte("-----END PGP "))
		if end < 0 {
			return nil
		}
		rest = rest[end+1:]
	}
}

// Keys returns the primary keys of the keyring, sorted by fingerprint.
func (kr *Keyring) Keys() []Key {
	keys := make([]Key, 0, len(kr.entities))
	seen := map[string]bool{}
	for _, e := range kr.entities {
		k := keyOf(e)
		if !seen[k.Fingerprint] {
			seen[k.Fingerprint] = true
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Fingerprint < keys[j].Fingerprint })
	return keys
}

// Lookup finds a primary key of the keyring by its fingerprint or long key
// id (hex, either case), or by the fingerprint or key id of one of its
// subkeys, as SSTATE_VALID_SIGS may list either.
func (kr *Keyring) Lookup(id string) (Key, bool) {
	id = strings.ToUpper(strings.TrimPrefix(strings.TrimPrefix(id, "0x"), "0X"))
	if id == "" {
		return Key{}, false
	}
	for _, e := range kr.entities {
		pubs := []*packet.PublicKey{e.PrimaryKey}
		for _, sk := range e.Subkeys {
			pubs = append(pubs, sk.PublicKey)
		}
		for _, pk := range pubs {
			if id == upperHex(pk.Fingerprint) || id == fmt.Sprintf("%016X", pk.KeyId) {
				return keyOf(e), true
			}
		}
	}
	return Key{}, false
}

// Issuer returns the primary key that issued sig (one binary or armored
// signature packet; the first one if several): found by the issuer
// fingerprint subpacket when present, else by the issuer key id; a subkey
// resolves to its primary key. It does not verify the signature.
func (kr *Keyring) Issuer(sig []byte) (Key, bool) {
	sigs, _ := parseSignatures(sig)
	for _, s := range sigs {
		if s.sig == nil {
			continue
		}
		if cands := kr.candidates(s.sig); len(cands) > 0 {
			return keyOf(cands[0].Entity), true
		}
		return Key{}, false
	}
	return Key{}, false
}

// candidates returns the keys (primary or subkey) that may have made sig,
// matched by issuer fingerprint when the signature carries one, else by
// key id.
func (kr *Keyring) candidates(sig *packet.Signature) []openpgp.Key {
	var id uint64
	switch {
	case sig.IssuerKeyId != nil:
		id = *sig.IssuerKeyId
	case len(sig.IssuerFingerprint) >= 8:
		// A v6 key id is the head of its fingerprint, a v4 one the tail.
		fp := sig.IssuerFingerprint
		if sig.IssuerKeyVersion == 6 {
			id = beUint64(fp[:8])
		} else {
			id = beUint64(fp[len(fp)-8:])
		}
	default:
		return nil
	}
	keys := kr.entities.KeysById(id)
	if len(sig.IssuerFingerprint) == 0 {
		return keys
	}
	// Key ids can collide; the fingerprint cannot.
	var exact []openpgp.Key
	for _, k := range keys {
		if bytes.Equal(k.PublicKey.Fingerprint, sig.IssuerFingerprint) {
			exact = append(exact, k)
		}
	}
	return exact
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}
