package config

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"reflect"
	"strings"

	"github.com/sstatefs/sstatefs/backend"
)

// Equivalence trust settings of a store (StoreConfig.EquivalencesFrom).
const (
	EquivalencesTrusted = "trusted"
	EquivalencesAny     = "any"
)

// StoreName is the store's name: its configured name, else one derived
// from its URL (the bucket, the host, or the directory's last element).
func StoreName(sc StoreConfig) string {
	if sc.Name != "" {
		return sc.Name
	}
	return deriveName(sc.URL)
}

// maxDerivedName keeps derived names short: they are label values of every
// per-store metric and words typed on command lines. 63 is the longest S3
// bucket name and DNS label.
const maxDerivedName = 63

// deriveName is the name of a store that was given none: the bucket of an
// s3 URL, the host (and port, when the URL has one: two local mirrors differ
// by it) of an http(s) URL, the last path element of a file URL; made
// valid (ValidName) by turning every run of other characters into "-".
func deriveName(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "store"
	}
	var n string
	switch u.Scheme {
	case "s3", "http", "https":
		n = u.Host
	default:
		n = path.Base(strings.TrimSuffix(u.Path, "/"))
	}
	var b strings.Builder
	for i := 0; i < len(n) && b.Len() < maxDerivedName; i++ {
		switch c := n[i]; {
		case nameChar(c):
			b.WriteByte(c)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	n = strings.TrimLeft(strings.TrimRight(b.String(), "-"), "_.-")
	if n == "" {
		n = "store"
	}
	return n
}

func nameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
}

// NameSyntax is the syntax of a store name, for messages.
const NameSyntax = "[A-Za-z0-9][A-Za-z0-9_.-]*"

// ValidName reports whether name is a valid store name (NameSyntax): safe
// as a metric label value, in a file name and on a command line, and never
// mistaken for a URL (no ":" or "/").
func ValidName(name string) bool {
	if name == "" || !nameChar(name[0]) || name[0] == '_' || name[0] == '.' || name[0] == '-' {
		return false
	}
	for i := 1; i < len(name); i++ {
		if !nameChar(name[i]) {
			return false
		}
	}
	return true
}

// ParseStoreArg splits a --store argument: "NAME=URL" gives a name and a
// URL, anything else is a URL (or, without a scheme, the name of a
// configured store: see Flags.Load). The part before "=" is a name only
// when it is one (ValidName: no ":" or "/"), so that a URL whose query
// holds "=" (https://h/p?a=b) is still a URL.
func ParseStoreArg(arg string) (name, rawURL string) {
	if n, u, ok := strings.Cut(arg, "="); ok && ValidName(n) {
		return n, u
	}
	return "", arg
}

// storeList builds the store list of the --store arguments, in their
// order: each is [NAME=]URL, or the bare name of a store of the current
// list (the file's), which is taken with its settings.
func storeList(current []StoreConfig, args []string) ([]StoreConfig, error) {
	list := make([]StoreConfig, 0, len(args))
	c := Config{Stores: current}
	for _, a := range args {
		name, u := ParseStoreArg(a)
		if name == "" && ValidName(u) {
			i, err := c.StoreNamed(u)
			if err != nil {
				return nil, fmt.Errorf("%q is neither a URL (file:///dir, s3://bucket/prefix, https://host/path) nor a configured store: %w", a, err)
			}
			list = append(list, current[i])
			continue
		}
		list = append(list, StoreConfig{Name: name, URL: u})
	}
	return list, nil
}

// Writable reports whether the store may receive writes: not marked
// read_only, and not an http(s) mirror.
func (sc StoreConfig) Writable() bool {
	if sc.ReadOnly {
		return false
	}
	u, err := url.Parse(sc.URL)
	return err == nil && u.Scheme != "http" && u.Scheme != "https"
}

// PublishStore is the index in Stores of the store that receives what
// bitbake publishes: the one marked publish, else the first writable one;
// -1 when no store is writable.
func (c *Config) PublishStore() int {
	for i, s := range c.Stores {
		if s.Publish {
			return i
		}
	}
	for i, s := range c.Stores {
		if s.Writable() {
			return i
		}
	}
	return -1
}

// StoreNamed is the index in Stores of the store called name (an error
// listing the names when there is none).
func (c *Config) StoreNamed(name string) (int, error) {
	var names []string
	for i, s := range c.Stores {
		if StoreName(s) == name {
			return i, nil
		}
		names = append(names, StoreName(s))
	}
	return -1, fmt.Errorf("no store named %q (the stores are: %s)", name, strings.Join(names, ", "))
}

// storeLabel names store i in messages: its place in the list, its name
// and its URL (without credentials).
func storeLabel(i int, sc StoreConfig) string {
	return fmt.Sprintf("store %d %q (%s)", i+1, StoreName(sc), backend.RedactURL(sc.URL))
}

// validateStores returns every problem of the store list: each store's,
// then those of the list as a whole (names, the publish store).
func (c *Config) validateStores() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for i, s := range c.Stores {
		name := storeLabel(i, s)
		if s.Name != "" && !ValidName(s.Name) {
			bad("store %d (%s): name %q: want %s (letters, digits, and _ . - after the first)", i+1, backend.RedactURL(s.URL), s.Name, NameSyntax)
		}
		u, err := url.Parse(s.URL)
		switch {
		case s.URL == "":
			bad("store %d: url is empty", i+1)
			continue
		case err != nil:
			bad("%s: invalid url: %v", name, err)
			continue
		}
		switch u.Scheme {
		case "file":
		case "s3":
			if u.Host == "" {
				bad("%s: no bucket (want s3://bucket/prefix)", name)
			}
			if s.Endpoint != "" {
				if eu, err := url.Parse(s.Endpoint); err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
					bad("%s: endpoint %q is not an http(s) URL", name, s.Endpoint)
				}
			}
		case "http", "https":
			if u.Host == "" {
				bad("%s: no host", name)
			}
			if u.User != nil {
				bad("%s: do not put credentials in the url; use netrc or bearer_token_file", name)
			}
		default:
			bad("%s: unsupported scheme %q (want file, s3, http or https)", name, u.Scheme)
			continue
		}
		// Keys set for a store they cannot apply to: only the file can
		// do that, since a flag sets a key only in the stores it fits.
		for _, st := range Settings() {
			if st.store != nil && !st.appliesTo(s.URL) && !reflect.ValueOf(st.store(&s)).Elem().IsZero() {
				_, key, _ := strings.Cut(st.Key, ".")
				bad("%s: %s applies to %s stores only", name, key, orList(st.Schemes))
			}
			if st.store != nil && len(st.OneOf) > 0 {
				// "" is the default: a StoreConfig that StoreDefaults did not fill
				if v := *st.store(&s).(*string); v != "" && !contains(st.OneOf, v) {
					_, key, _ := strings.Cut(st.Key, ".")
					bad("%s: %s %q: want %s", name, key, v, orList(st.OneOf))
				}
			}
		}
		if s.RequireSignoffs > 0 && s.Keyring == "" {
			bad("%s: require_signoffs = %d needs a keyring (the keys whose signatures count)", name, s.RequireSignoffs)
		}
		for _, f := range []struct{ key, path string }{{"ca_bundle", s.CABundle}, {"bearer_token_file", s.BearerTokenFile}, {"netrc", s.Netrc}, {"keyring", s.Keyring}} {
			if f.path != "" {
				if _, err := os.Stat(f.path); err != nil {
					bad("%s: %s: %v", name, f.key, err)
				}
			}
		}
		if err := s.Timeout.check(name + ": timeout"); err != nil {
			errs = append(errs, err)
		}
		if s.MaxConnections < 0 {
			bad("%s: max_connections must not be negative", name)
		}
		if s.Publish && !s.Writable() {
			why := "read_only = true"
			if !s.ReadOnly {
				why = "an http(s) store is read-only"
			}
			bad("%s: publish = true on a read-only store (%s)", name, why)
		}
	}
	errs = append(errs, c.checkNames()...)
	var publish []string
	for i, s := range c.Stores {
		if s.Publish {
			publish = append(publish, storeLabel(i, s))
		}
	}
	if len(publish) > 1 {
		bad("publish = true on %d stores (%s): exactly one store receives what bitbake publishes", len(publish), strings.Join(publish, ", "))
	}
	if c.Publish.RequireStore && len(c.Stores) > 0 && c.PublishStore() < 0 {
		bad("%s is set, but no store is writable (every store is read-only)", label("publish.require_store"))
	}
	return errs
}

// checkNames reports stores that share a name. Derived names that collide
// are not made unique behind the user's back (a suffix would change with
// the order of the list, and with it every metric's label): the user names
// the stores.
func (c *Config) checkNames() []error {
	var errs []error
	first := map[string]int{}
	for i, s := range c.Stores {
		n := StoreName(s)
		j, seen := first[n]
		if !seen {
			first[n] = i
			continue
		}
		how := ""
		if c.Stores[j].Name == "" || s.Name == "" {
			how = " (derived from the url: give each a name, with name = \"...\" in its [[store]] or --store NAME=URL)"
		}
		errs = append(errs, fmt.Errorf("%s and %s have the same name%s", storeLabel(j, c.Stores[j]), storeLabel(i, s), how))
	}
	return errs
}
