// Package backend defines the storage edge of sstatefs: a small, context-first
// interface to an object store laid out as an SSTATE_DIR, the errors every
// store maps its failures to, and decorators that wrap a store.
//
// Keys are slash-separated paths relative to the store's root (its prefix),
// never starting with a slash, for example
// "ab/cd/sstate:zlib:...:abcd..._populate_sysroot.tar.zst" or
// ".sstatefs/index/snapshot.v1".
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Sentinel errors. Stores wrap them with the key they concern; callers test
// them with errors.Is.
var (
	// ErrNotExist: the key does not exist in the store.
	ErrNotExist = errors.New("object does not exist")
	// ErrExist: Create found the key already present (first writer wins).
	ErrExist = errors.New("object already exists")
	// ErrReadOnly: the store does not accept writes (an HTTP mirror).
	ErrReadOnly = errors.New("store is read-only")
	// ErrNotSupported: the store cannot do this operation (listing an HTTP mirror).
	ErrNotSupported = errors.New("operation not supported by this store")
	// ErrInvalidKey: the key is empty, absolute or climbs out of the store.
	ErrInvalidKey = errors.New("invalid object key")
)

// ObjectInfo describes one object in a store.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store is an object store laid out as an SSTATE_DIR.
//
// Contract, shared by every implementation and checked by backend/storetest:
//   - every method honours ctx (deadline and cancellation) and returns promptly
//     once it is done;
//   - a missing key is reported as an error wrapping ErrNotExist;
//   - Open returns a reader the caller must close; it yields exactly the
//     requested range, or fewer bytes followed by an error (never a short
//     clean EOF inside the object);
//   - Create writes the object whole or not at all (no reader ever sees a
//     partial object) and never replaces an existing one: it returns ErrExist;
//   - Put replaces the object atomically; it is for sstatefs's own metadata
//     (index snapshots), never for sstate objects;
//   - Delete of a missing key is not an error;
//   - List visits keys in no particular order, including hidden metadata keys.
type Store interface {
	// Stat returns the object's size and modification time.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// Open reads length bytes from offset; length < 0 reads to the end.
	Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	// List calls fn for every object whose key starts with prefix; an error
	// returned by fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Create stores size bytes from r under key unless key exists.
	Create(ctx context.Context, key string, r io.Reader, size int64) error
	// Put stores size bytes from r under key, atomically replacing it.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Delete removes key.
	Delete(ctx context.Context, key string) error
	// Location names the store for logs and messages; it never contains secrets.
	Location() string
}

// Unwrapper is implemented by decorators so callers can reach the store they wrap.
type Unwrapper interface {
	Unwrap() Store
}

// CheckKey validates a key: relative, slash-separated, no "." or ".." or empty
// elements, no control characters (NUL, a newline: no store object needs
// one, and they would forge lines in logs and lists).
func CheckKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") {
		return fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] == 0x7f {
			return fmt.Errorf("%w: %q: control character", ErrInvalidKey, key)
		}
	}
	for _, el := range strings.Split(key, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%w: %q", ErrInvalidKey, key)
		}
	}
	return nil
}

// MetaPrefix is the hidden prefix under which sstatefs keeps its own metadata
// (index snapshots, journal segments) in a store, beside the objects.
const MetaPrefix = ".sstatefs/"

// IsMeta reports whether key lies under MetaPrefix.
func IsMeta(key string) bool { return strings.HasPrefix(key, MetaPrefix) }

// ReadOnlyStore is implemented by stores that never accept writes.
type ReadOnlyStore interface {
	ReadOnly() bool
}

// IsReadOnly reports whether s, or a store it wraps, is read-only.
func IsReadOnly(s Store) bool {
	for s != nil {
		if ro, ok := s.(ReadOnlyStore); ok && ro.ReadOnly() {
			return true
		}
		u, ok := s.(Unwrapper)
		if !ok {
			return false
		}
		s = u.Unwrap()
	}
	return false
}

type sha256Key struct{}

// WithSHA256 tells a Create or Put the SHA-256 of the data it is about to
// store, which the caller has computed anyway (for the index): a store may
// use it instead of hashing the data again (S3 signs the payload with it and
// has the server check it). Given to Open, it says that the caller checks
// the object's bytes against this digest, so the store may skip checksums
// of its own over the response.
func WithSHA256(ctx context.Context, sum [32]byte) context.Context {
	return context.WithValue(ctx, sha256Key{}, sum)
}

// SHA256From returns the digest given by WithSHA256.
func SHA256From(ctx context.Context) ([32]byte, bool) {
	sum, ok := ctx.Value(sha256Key{}).([32]byte)
	return sum, ok
}

// AfterLister is implemented by stores that can start a listing after a
// key, so that a reader of an append-mostly prefix (the index journal,
// whose keys start with the time) pays for what is new rather than for
// everything there is. Decorators implement it by passing it on.
type AfterLister interface {
	// ListAfter is List restricted to the keys that sort after start
	// (byte order; start need not exist). Like List, it visits keys in
	// no particular order.
	ListAfter(ctx context.Context, prefix, start string, fn func(ObjectInfo) error) error
}

// ListAfter lists the keys of s under prefix that sort after start: with
// the store's own ListAfter when it has one (S3 StartAfter: one request
// per 1,000 keys after start), else by filtering a whole List, which
// gives the same keys at the cost of listing everything.
func ListAfter(ctx context.Context, s Store, prefix, start string, fn func(ObjectInfo) error) error {
	if al, ok := s.(AfterLister); ok {
		return al.ListAfter(ctx, prefix, start, fn)
	}
	return s.List(ctx, prefix, func(oi ObjectInfo) error {
		if oi.Key <= start {
			return nil
		}
		return fn(oi)
	})
}
