package config

import (
	"encoding"
	"fmt"
	"net/url"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	sfs "github.com/sstatefs/sstatefs/fs"
	"github.com/sstatefs/sstatefs/publish"
)

// Setting is one configuration setting, declared once: the flags, the
// defaults, the help text, the README's table and part of Validate are all
// built from it, so that they cannot disagree.
type Setting struct {
	Key     string   // TOML path: "cache.size"; store.* keys are those of each [[store]]
	Flag    string   // flag name without dashes: "cache-size"; "" for none of its own
	FlagDoc string   // README's flag column when Flag is "" (how the command line sets it)
	Aliases []string // further flag names meaning the same
	// FlagType names the flag's value in -h when the flag takes something
	// else than the key (--publish-store NAME for store.publish).
	FlagType string
	// Default in the syntax of the flag and the file ("" for none); Dynamic
	// computes it when it depends on the machine (then DefaultDoc says how).
	Default    string
	Dynamic    func() string
	DefaultDoc string // README and help wording of the default when it is not a fixed value
	Help       string // one line, for -h
	Doc        string // README's wording (markdown) when it says more than Help
	OneOf      []string
	AtLeast    *int // minimum of an integer setting
	// Schemes are the store URL schemes a store setting applies to (nil:
	// all). Its flag sets it only in the stores of those schemes; set in the
	// file for another store, it is an error.
	Schemes []string

	// apply, when set, is what the flag's values (every occurrence, in
	// order) do instead of setting the field of each store.
	apply func(c *Config, vals []string) error

	field func(*Config) any      // pointer to the field (settings of the whole config)
	store func(*StoreConfig) any // pointer to the field (settings of each store)
}

// Env is the environment variable of the setting. (Not read yet: the
// environment layer comes with the command-line work of the next issue.)
func (s *Setting) Env() string {
	name := s.Flag
	if name == "" {
		name = s.Key
	}
	return "SSTATEFS_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(name))
}

// Section is the first part of the key: "store", "cache", ...
func (s *Setting) Section() string { k, _, _ := strings.Cut(s.Key, "."); return k }

// perStore says that the default applies to every [[store]] entry that
// leaves the key out (store.url's default is instead the default list).
func (s *Setting) perStore() bool { return s.store != nil && s.Key != "store.url" }

func (s *Setting) defaultValue() string {
	if s.Dynamic != nil {
		return s.Dynamic()
	}
	return s.Default
}

// ptr is the setting's field: in c, or in a store of c for store
// settings.
func (s *Setting) ptr(c *Config, sc *StoreConfig) any {
	if s.store == nil {
		return s.field(c)
	}
	return s.store(sc)
}

// set sets the setting in c from its flag syntax.
func (s *Setting) set(c *Config, v string) error { return s.setAll(c, []string{v}) }

// setAll applies the values of every occurrence of the flag. A store
// setting's flag sets the key in every store of the list (from the file or
// from --store) whose scheme it applies to; the last occurrence wins.
func (s *Setting) setAll(c *Config, vals []string) error {
	if s.apply != nil {
		return s.apply(c, vals)
	}
	v := vals[len(vals)-1]
	if s.store == nil {
		return setValue(s.field(c), v)
	}
	if err := s.parse(v); err != nil {
		return err
	}
	applied := false
	for i := range c.Stores {
		if s.appliesTo(c.Stores[i].URL) {
			_ = setValue(s.store(&c.Stores[i]), v)
			applied = true
		}
	}
	if !applied && len(c.Stores) > 0 {
		return fmt.Errorf("applies to %s stores only, and no store of the list is one", orList(s.Schemes))
	}
	return nil
}

// appliesTo says whether the store setting applies to a store of this URL.
func (s *Setting) appliesTo(rawURL string) bool {
	if s.Schemes == nil {
		return true
	}
	u, err := url.Parse(rawURL)
	return err == nil && contains(s.Schemes, u.Scheme)
}

// parse checks a flag value when it is given: what can never be valid (an
// integer that is not one) is refused at once.
func (s *Setting) parse(v string) error {
	if s.FlagType != "" {
		return nil // not the key's type: checked by apply, against the list
	}
	return setValue(s.ptr(&Config{}, &StoreConfig{}), v)
}

// flagKind is the flag's value type in -h.
func (s *Setting) flagKind() string {
	if s.FlagType != "" {
		return s.FlagType
	}
	return s.kind()
}

// kind names the value type for help and the README.
func (s *Setting) kind() string {
	switch s.ptr(&Config{}, &StoreConfig{}).(type) {
	case *bool:
		return "bool"
	case *int:
		return "int"
	case *Duration:
		return "duration"
	case *Size:
		return "size"
	default:
		return "string"
	}
}

func setValue(p any, v string) error {
	switch p := p.(type) {
	case *string:
		*p = v
	case *bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q: want true or false", v)
		}
		*p = b
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q: want an integer", v)
		}
		*p = n
	case encoding.TextUnmarshaler:
		return p.UnmarshalText([]byte(v))
	default:
		panic(fmt.Sprintf("config: setting of type %T", p))
	}
	return nil
}

// helpDefault is the default as -h and the README show it ("" when none).
func (s *Setting) helpDefault() string {
	if s.DefaultDoc != "" {
		return s.DefaultDoc
	}
	return s.defaultValue()
}

// Usage is the flag's help line, ending with its default.
func (s *Setting) Usage() string {
	u := s.Help
	if d := s.helpDefault(); d != "" && d != "false" {
		// without the README's backquotes: pflag would take a quoted
		// word for the name of the flag's value
		u += " (default " + strings.ReplaceAll(d, "`", "") + ")"
	}
	return u
}

func atLeast(n int) *int { return &n }

var settings []*Setting

// Settings is the table of every setting, in the order of the README.
func Settings() []*Setting {
	if settings == nil {
		settings = table()
	}
	return settings
}

// Lookup returns the setting of a TOML key, or nil.
func Lookup(key string) *Setting {
	for _, s := range Settings() {
		if s.Key == key {
			return s
		}
	}
	return nil
}

// label names a setting in messages: its key and its flag.
func label(key string) string {
	if s := Lookup(key); s != nil {
		return fmt.Sprintf("%s (--%s)", key, s.Flag)
	}
	return key
}

var (
	s3Only   = []string{"s3"}
	httpOnly = []string{"http", "https"}
)

func table() []*Setting {
	st := func(f func(*StoreConfig) any) func(*StoreConfig) any { return f }
	return []*Setting{
		{Key: "store.url", Flag: "store", FlagType: "[NAME=]URL", Dynamic: func() string { return "file://" + filepath.Join(DataDir(), "store") },
			DefaultDoc: "`file://~/.local/share/sstatefs/store`",
			Help:       "a store: [NAME=]URL (file:///dir, s3://bucket/prefix, https://host/path) or a configured store's NAME; repeatable: the list, in trust order, replaces the file's",
			Doc:        "`file:///dir`, `s3://bucket/prefix`, `https://host/path`; the flag takes `[NAME=]URL` or the `NAME` of a store of the file, and may be repeated: the stores given, in trust order, replace the file's list",
			store:      st(func(s *StoreConfig) any { return &s.URL }),
			apply: func(c *Config, vals []string) (err error) {
				c.Stores, err = storeList(c.Stores, vals)
				return err
			}},
		{Key: "store.name", FlagDoc: "`--store NAME=URL`", DefaultDoc: "derived from the URL",
			Help:  "short name of the store in logs, metrics, status and --store NAME",
			Doc:   "short name (`" + NameSyntax + "`) of the store in logs, metrics, `status` and `--store NAME`; the default is the bucket, the host (`host-port` with a port) or the directory's last element, and two stores whose derived names collide must be given names",
			store: st(func(s *StoreConfig) any { return &s.Name })},
		{Key: "store.read_only", Flag: "store-read-only",
			Help:  "never write to the store (http(s) stores always are read-only); the flag makes every store read-only",
			Doc:   "never write to the store: it receives no publish, index or equivalence record (http(s) stores are read-only anyway); the flag makes every store of the list read-only, publishing nowhere",
			store: st(func(s *StoreConfig) any { return &s.ReadOnly }),
			apply: func(c *Config, vals []string) error {
				ro, err := strconv.ParseBool(vals[len(vals)-1])
				if err != nil {
					return fmt.Errorf("%q: want true or false", vals[len(vals)-1])
				}
				for i := range c.Stores {
					// The flag overrides the file's publish marks, the way
					// flags override the file (--publish-store comes after
					// it, and is refused on a read-only store).
					c.Stores[i].ReadOnly = ro
					c.Stores[i].Publish = c.Stores[i].Publish && !ro
				}
				return nil
			}},
		{Key: "store.publish", Flag: "publish-store", FlagType: "NAME", DefaultDoc: "the first writable store",
			Help:  "the store (by name) that receives what bitbake publishes",
			Doc:   "this store receives what bitbake publishes (at most one store; never a read-only one); the flag names it: `--publish-store NAME`",
			store: st(func(s *StoreConfig) any { return &s.Publish }),
			apply: func(c *Config, vals []string) error {
				i, err := c.StoreNamed(vals[len(vals)-1])
				if err != nil {
					return err
				}
				for j := range c.Stores {
					c.Stores[j].Publish = j == i
				}
				return nil
			}},
		{Key: "store.equivalences_from", Flag: "store-equivalences-from", Default: EquivalencesTrusted, OneOf: []string{EquivalencesTrusted, EquivalencesAny},
			Help:  "whose hash equivalence records may lead to this store's objects: trusted (this and more trusted stores) or any",
			Doc:   "whose hash equivalence records may lead a name to this store's objects: `trusted` (this store's and more trusted stores') or `any`",
			store: st(func(s *StoreConfig) any { return &s.EquivalencesFrom })},
		{Key: "store.keyring", Flag: "store-keyring",
			Help:  "OpenPGP public keys whose signatures count for this store: a key file (armored or binary) or a directory of them",
			Doc:   "OpenPGP public keys whose signatures count for this store's objects: a key file (armored or binary, as `gpg --export` writes) or a directory of them",
			store: st(func(s *StoreConfig) any { return &s.Keyring })},
		{Key: "store.require_signoffs", Flag: "store-require-signoffs", Default: "0", AtLeast: atLeast(0),
			Help:  "show an object of this store only when this many distinct keyring keys signed its bytes (0: no requirement)",
			Doc:   "show an object of this store only when at least this many distinct keys of `keyring` made valid signatures over its exact bytes (its `.sig` and sign-offs); otherwise it is absent and bitbake builds the task. 0: no requirement",
			store: st(func(s *StoreConfig) any { return &s.RequireSignoffs })},
		{Key: "store.endpoint", Flag: "store-endpoint", DefaultDoc: "AWS", Schemes: s3Only,
			Help:  "s3: endpoint URL of an S3-compatible server",
			store: st(func(s *StoreConfig) any { return &s.Endpoint })},
		{Key: "store.region", Flag: "store-region", DefaultDoc: "`$AWS_REGION`, else `us-east-1`", Schemes: s3Only,
			Help:  "s3: region",
			store: st(func(s *StoreConfig) any { return &s.Region })},
		{Key: "store.path_style", Flag: "store-path-style", Schemes: s3Only,
			Help: "s3: path-style addressing", Doc: "s3: path-style addressing (most S3-compatible servers)",
			store: st(func(s *StoreConfig) any { return &s.PathStyle })},
		{Key: "store.profile", Flag: "store-profile", DefaultDoc: "SDK default", Schemes: s3Only,
			Help: "s3: shared config profile", Doc: "s3: shared config/credentials profile",
			store: st(func(s *StoreConfig) any { return &s.Profile })},
		{Key: "store.ca_bundle", Flag: "store-ca-bundle", DefaultDoc: "system roots", Schemes: []string{"s3", "http", "https"},
			Help:  "s3, https: PEM file of extra CA certificates to trust",
			store: st(func(s *StoreConfig) any { return &s.CABundle })},
		{Key: "store.bearer_token_file", Flag: "store-bearer-token-file", Schemes: httpOnly,
			Help:  "https: file holding a bearer token",
			store: st(func(s *StoreConfig) any { return &s.BearerTokenFile })},
		{Key: "store.netrc", Flag: "store-netrc", DefaultDoc: "`$NETRC`, else `~/.netrc`", Schemes: httpOnly,
			Help:  "https: netrc file for basic auth",
			store: st(func(s *StoreConfig) any { return &s.Netrc })},
		{Key: "store.timeout", Flag: "store-timeout", Default: "10s",
			Help:  "deadline of every remote call",
			Doc:   "deadline of every remote call (for reads: each timeout spent waiting must bring at least 64 KiB or the end of the object)",
			store: st(func(s *StoreConfig) any { return &s.Timeout })},
		{Key: "store.max_connections", Flag: "store-max-connections", Default: "64",
			Help:  "connections kept to the store",
			store: st(func(s *StoreConfig) any { return &s.MaxConnections })},
		{Key: "cache.dir", Flag: "cache-dir", Dynamic: CacheDir, DefaultDoc: "`$XDG_CACHE_HOME/sstatefs` (`~/.cache/sstatefs`)",
			Help:  "cache, overlay, upload queue and state of the mount",
			field: func(c *Config) any { return &c.Cache.Dir }},
		{Key: "cache.size", Flag: "cache-size", Default: "20GiB",
			Help:  "bound of the object cache",
			field: func(c *Config) any { return &c.Cache.Size }},
		{Key: "index.refresh_interval", Flag: "index-refresh-interval", Default: "1m",
			Help:  "how often the mount reloads the index",
			Doc:   "how often the mount reloads the index; also how long the kernel may cache names and attributes (of store objects, which never change, and of directories: one hour)",
			field: func(c *Config) any { return &c.Index.RefreshInterval }},
		{Key: "index.max_age", Flag: "index-max-age", DefaultDoc: "3 × refresh interval",
			Help:  "absent names are answered from memory while the index is younger",
			field: func(c *Config) any { return &c.Index.MaxAge }},
		{Key: "index.negative_ttl", Flag: "index-negative-ttl", Default: "1m",
			Help:  "without a fresh index: how long a probe's \"absent\" is kept",
			Doc:   "without a fresh index: how long a probe's \"absent\" is kept (the kernel caches absent names for the smaller of this and the refresh interval)",
			field: func(c *Config) any { return &c.Index.NegativeTTL }},
		{Key: "index.compact_interval", Flag: "index-compact-interval", Default: "1h",
			Help:  "how often a mount checks whether to fold the journal into a new snapshot; 0 disables compaction by this mount",
			Doc:   "how often a mount checks whether to fold the journal (64 segments or more) into a new snapshot; `0` disables compaction by this mount (all triggers)",
			field: func(c *Config) any { return &c.Index.CompactInterval }},
		{Key: "index.compact_segments", Flag: "index-compact-segments", Default: "1000",
			Help:  "fold the journal once a refresh finds this many segments on the snapshot; 0 disables",
			Doc:   "fold the journal once a refresh finds this many segments on top of the snapshot (each costs a new mount a request); `0` disables this trigger",
			field: func(c *Config) any { return &c.Index.CompactSegments }},
		{Key: "index.compact_bytes", Flag: "index-compact-bytes", Default: "64MiB",
			Help:  "fold the journal once a refresh finds this many bytes of segments on the snapshot; 0 disables",
			Doc:   "fold the journal once a refresh finds this many bytes of segments on top of the snapshot; `0` disables this trigger",
			field: func(c *Config) any { return &c.Index.CompactBytes }},
		{Key: "mount.allow_other", Flag: "mount-allow-other", Aliases: []string{"allow-other"},
			Help:  "let other users (the build user) use the mount",
			field: func(c *Config) any { return &c.Mount.AllowOther }},
		{Key: "mount.owner", Flag: "mount-owner", DefaultDoc: "the mountpoint's owner",
			Help:  "uid:gid owning store objects; it (and its group) may publish",
			Doc:   "`uid:gid` shown as owner of the root, store objects and directories; with root, that uid and that group may publish",
			field: func(c *Config) any { return &c.Mount.Owner }},
		{Key: "mount.debug", Flag: "mount-debug",
			Help:  "log every FUSE request",
			field: func(c *Config) any { return &c.Mount.Debug }},
		{Key: "mount.ready_file", Flag: "mount-ready-file", Aliases: []string{"ready-file"},
			Help:  "created once the mount is up and its index loaded, removed at shutdown (readiness gate)",
			field: func(c *Config) any { return &c.Mount.ReadyFile }},
		{Key: "mount.daemon_opens", Flag: "mount-daemon-opens",
			Help:  "answer every open in sstatefs (one round trip per open, FUSE passthrough of cached objects) instead of letting the kernel open files itself",
			field: func(c *Config) any { return &c.Mount.DaemonOpens }},
		{Key: "mount.read_ahead", Flag: "mount-read-ahead", Dynamic: func() string { return Size{Bytes: sfs.ReadAheadKB << 10}.String() },
			Help:  "kernel read-ahead of a mount made by root, the size of streamed READ requests (0: the kernel's 128KiB)",
			Doc:   "kernel read-ahead of a mount made by root: the size of the READ requests a streaming reader causes (`0`: the kernel's 128KiB)",
			field: func(c *Config) any { return &c.Mount.ReadAhead }},
		{Key: "mount.no_passthrough", Flag: "mount-no-passthrough",
			Help:  "with --mount-daemon-opens: serve reads of cached objects from sstatefs instead of FUSE passthrough",
			Doc:   "with `daemon_opens`: serve reads of cached objects from sstatefs instead of FUSE passthrough",
			field: func(c *Config) any { return &c.Mount.NoPassthrough }},
		{Key: "hashserv.listen", Flag: "hashserv", DefaultDoc: "off",
			Help:  "serve bitbake's hash equivalence protocol on unix:///path or 127.0.0.1:PORT",
			Doc:   "serve bitbake's hash equivalence protocol on `unix:///path` or `127.0.0.1:PORT`",
			field: func(c *Config) any { return &c.Hashserv.Listen }},
		{Key: "hashserv.read_only", Flag: "hashserv-read-only",
			Help:  "answer reports without recording them (like bitbake's --read-only server)",
			Doc:   "answer reports without recording them",
			field: func(c *Config) any { return &c.Hashserv.ReadOnly }},
		{Key: "hashserv.group", Flag: "hashserv-group",
			Help:  "group (name or gid) that may also connect to the hash equivalence socket (mode 0660 instead of 0600)",
			Doc:   "group (name or gid) that may also connect to the hash equivalence socket (mode 0660 instead of 0600); its members record only if the publish rule allows them",
			field: func(c *Config) any { return &c.Hashserv.Group }},
		{Key: "prefetch.mode", Flag: "prefetch-mode", Default: "touch", OneOf: []string{"touch", "lookup", "off"},
			Help:  "what starts a background fetch of a package: touch (bitbake's check), lookup, off",
			Doc:   "what starts a background fetch of a package: `touch`, `lookup`, `off`",
			field: func(c *Config) any { return &c.Prefetch.Mode }},
		{Key: "prefetch.concurrency", Flag: "prefetch-concurrency", Default: "4", AtLeast: atLeast(1),
			Help:  "background fetches at once",
			field: func(c *Config) any { return &c.Prefetch.Concurrency }},
		{Key: "metrics.addr", Flag: "metrics-addr", DefaultDoc: "off",
			Help:  "host:port serving /metrics, /healthz, /readyz, /status (observation only)",
			Doc:   "`host:port` serving `/metrics`, `/healthz`, `/readyz`, `/status` (observation only; warned about when not loopback)",
			field: func(c *Config) any { return &c.Metrics.Addr }},
		{Key: "publish.concurrency", Flag: "publish-concurrency", Default: strconv.Itoa(publish.DefaultConcurrency), AtLeast: atLeast(1),
			Help:  "uploads to the store at once",
			field: func(c *Config) any { return &c.Publish.Concurrency }},
		{Key: "publish.drain_timeout", Flag: "publish-drain-timeout", Default: "30s",
			Help:  "at SIGTERM, how long to keep uploading before exiting",
			field: func(c *Config) any { return &c.Publish.DrainTimeout }},
		{Key: "publish.record_interval", Flag: "publish-record-interval", Default: "30s",
			Help:  "longest an index record waits to share a journal segment with others (at most 1000 a segment; the mount's hash equivalence reports too, answered at once and kept in a local file until written)",
			Doc:   "longest an index record (published object, report to the mount's hash equivalence server, access) waits to share a journal segment with others; a segment also closes at 1,000 records, at exit and when the upload queue drains. A report is answered at once and kept in `<cache-dir>/state/hashserv-reports.wal` until its segment is written. Other mounts see records at their next index refresh (`index.refresh_interval`) anyway. `0`: only records written at the same moment share a segment",
			field: func(c *Config) any { return &c.Publish.RecordInterval }},
		{Key: "publish.writer_id", Flag: "publish-writer-id", Dynamic: defaultWriterID, DefaultDoc: "the host name",
			Help:  "names this mount's journal segments",
			field: func(c *Config) any { return &c.Publish.WriterID }},
		{Key: "publish.sign_key", Flag: "publish-sign-key",
			Help:  "OpenPGP secret key file: the mount signs what it publishes, and adds its sign-off to identical objects already in the store",
			Doc:   "OpenPGP secret key file (armored or binary, as `gpg --export-secret-keys` writes): the mount signs every sstate archive it publishes (not .siginfo or .sig files) and records the signature as a sign-off in the publish store's index; publishing an object the store already has with identical bytes adds this key's sign-off (the rebuilder workflow)",
			field: func(c *Config) any { return &c.Publish.SignKey }},
		{Key: "publish.sign_passphrase_file", Flag: "publish-sign-passphrase-file",
			Help:  "file holding the passphrase of publish.sign_key (never logged)",
			field: func(c *Config) any { return &c.Publish.SignPassphraseFile }},
		{Key: "publish.require_store", Flag: "require-publish-store",
			Help:  "refuse to mount when the publish store cannot be reached at start (else the mount comes up degraded)",
			field: func(c *Config) any { return &c.Publish.RequireStore }},
		{Key: "log.level", Flag: "log-level", Default: "info", OneOf: []string{"debug", "info", "warn", "error"},
			Help:  "debug, info, warn or error",
			Doc:   "`debug`, `info`, `warn`, `error` (`--debug` sets `debug` and `mount.debug`)",
			field: func(c *Config) any { return &c.Log.Level }},
		{Key: "log.format", Flag: "log-format", Default: "text", OneOf: []string{"text", "json"},
			Help:  "text or json",
			Doc:   "`text` or `json`",
			field: func(c *Config) any { return &c.Log.Format }},
	}
}

// check applies the table's rules for the setting to c (every store for
// store settings is left to Validate, which names the store).
func (s *Setting) check(c *Config) error {
	if s.store != nil {
		return nil
	}
	v := reflect.ValueOf(s.field(c)).Elem().Interface()
	switch v := v.(type) {
	case Duration:
		return v.check(label(s.Key))
	case Size:
		return v.check(label(s.Key))
	case string:
		if len(s.OneOf) > 0 && !contains(s.OneOf, v) {
			return fmt.Errorf("%s %q: want %s", s.Key, v, orList(s.OneOf))
		}
	case int:
		if s.AtLeast != nil && v < *s.AtLeast {
			return fmt.Errorf("%s must be at least %d, got %d", s.Key, *s.AtLeast, v)
		}
	}
	return nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// orList writes "a, b or c".
func orList(l []string) string {
	if len(l) == 1 {
		return l[0]
	}
	return strings.Join(l[:len(l)-1], ", ") + " or " + l[len(l)-1]
}
