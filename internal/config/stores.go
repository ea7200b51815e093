package config

import (
	"fmt"
	"net/url"
	"path"
	"strings"
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

func deriveName(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "store"
	}
	var n string
	switch u.Scheme {
	case "s3", "http", "https":
		n = u.Hostname()
	default:
		n = path.Base(strings.TrimSuffix(u.Path, "/"))
	}
	if n == "" || n == "." || n == "/" {
		n = "store"
	}
	return n
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
