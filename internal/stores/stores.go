// Package stores opens the store a configuration entry names: its backend
// wrapped in the decorators every remote call goes through.
package stores

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/file"
	"github.com/sstatefs/sstatefs/backend/httpstore"
	"github.com/sstatefs/sstatefs/backend/s3"
	"github.com/sstatefs/sstatefs/internal/config"
)

// Open builds the backend of a store entry and wraps it in the
// decorators every remote call goes through: the one place that composes
// the stack. A store configured read_only refuses every write
// (backend.ReadOnly), whatever asks.
func Open(ctx context.Context, sc config.StoreConfig) (backend.Store, error) {
	u, err := url.Parse(sc.URL)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", backend.RedactURL(sc.URL), err)
	}
	var s backend.Store
	switch u.Scheme {
	case "file":
		dir, err := file.ParseURL(sc.URL)
		if err != nil {
			return nil, err
		}
		s, err = file.New(dir)
		if err != nil {
			return nil, err
		}
	case "s3":
		bucket, prefix, err := s3.ParseURL(sc.URL)
		if err != nil {
			return nil, err
		}
		s, err = s3.New(ctx, s3.Config{
			Bucket: bucket, Prefix: prefix, Endpoint: sc.Endpoint, Region: sc.Region,
			Profile: sc.Profile, CABundle: sc.CABundle, PathStyle: sc.PathStyle, MaxConns: sc.MaxConnections,
		})
		if err != nil {
			return nil, err
		}
	case "http", "https":
		s, err = httpstore.New(httpstore.Config{
			URL: sc.URL, BearerTokenFile: sc.BearerTokenFile, Netrc: sc.Netrc,
			CABundle: sc.CABundle, MaxConns: sc.MaxConnections,
		})
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("store %s: unsupported scheme %q (want file, s3, http or https)", backend.RedactURL(sc.URL), u.Scheme)
	}
	s = &backend.Timeout{Store: s, D: sc.Timeout.Duration}
	if sc.ReadOnly {
		// outermost, so that a write is refused before anything else runs
		s = backend.ReadOnly(s)
	}
	return s, nil
}

// Name is a store's URL fit for messages.
func Name(sc config.StoreConfig) string {
	return strings.TrimSuffix(backend.RedactURL(sc.URL), "/")
}
