package backend

import (
	"context"
	"fmt"
	"io"
)

// ReadOnly wraps s so that every write (Create, Put, Delete) is refused
// with an error wrapping ErrReadOnly and naming the store, before it
// reaches s; reads pass through, and IsReadOnly reports the result
// read-only. It keeps a store configured read_only = true out of reach of
// every writer (publish, index, equivalence records, push), whichever
// asks, rather than relying on each to check.
func ReadOnly(s Store) Store { return &readOnly{Store: s} }

type readOnly struct{ Store }

var _ ReadOnlyStore = (*readOnly)(nil)

// Unwrap returns the wrapped store.
func (r *readOnly) Unwrap() Store { return r.Store }

var _ AfterLister = (*readOnly)(nil)

// ListAfter implements AfterLister: reads pass through.
func (r *readOnly) ListAfter(ctx context.Context, prefix, start string, fn func(ObjectInfo) error) error {
	return ListAfter(ctx, r.Store, prefix, start, fn)
}

// ReadOnly implements ReadOnlyStore.
func (r *readOnly) ReadOnly() bool { return true }

func (r *readOnly) refuse(op, key string) error {
	return fmt.Errorf("%s %s in %s: %w (configured read_only)", op, key, r.Location(), ErrReadOnly)
}

func (r *readOnly) Create(ctx context.Context, key string, _ io.Reader, _ int64) error {
	return r.refuse("create", key)
}

func (r *readOnly) Put(ctx context.Context, key string, _ io.Reader, _ int64) error {
	return r.refuse("put", key)
}

func (r *readOnly) Delete(ctx context.Context, key string) error {
	return r.refuse("delete", key)
}
