// Package config owns the configuration of sstatefs: the Config struct, the
// table that declares every setting once (TOML key, flag, environment
// name, default, help, validation), strict TOML decoding, validation, and
// the flag sets built from the table.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the whole configuration: defaults, then the TOML file, then
// flags. Every key has a flag named <section>-<key> with dashes; those of
// [[store]] (store-<key>) set the key in every store of the list it fits,
// and the list itself is given by repeating --store [NAME=]URL.
type Config struct {
	Stores   []StoreConfig  `toml:"store"`
	Cache    CacheConfig    `toml:"cache"`
	Index    IndexConfig    `toml:"index"`
	Mount    MountConfig    `toml:"mount"`
	Publish  PublishConfig  `toml:"publish"`
	Metrics  MetricsConfig  `toml:"metrics"`
	Prefetch PrefetchConfig `toml:"prefetch"`
	Hashserv HashservConfig `toml:"hashserv"`
	Log      LogConfig      `toml:"log"`
}

// HashservConfig is the hash equivalence server a mount runs.
type HashservConfig struct {
	// Listen: unix:///path/to.sock or 127.0.0.1:PORT; "" (default) is off.
	Listen   string `toml:"listen"`
	ReadOnly bool   `toml:"read_only"` // answer reports without recording them
	// Group (a name or a gid) may connect to the unix socket too (mode
	// 0660); "" (default): only the socket's owner (mode 0600).
	Group string `toml:"group"`
}

// PrefetchConfig is fetching objects before bitbake opens them.
type PrefetchConfig struct {
	// Mode: "touch" (default: bitbake touches every object it is about to
	// restore right after checking it), "lookup" (every looked-up package),
	// or "off".
	Mode        string `toml:"mode"`
	Concurrency int    `toml:"concurrency"` // background fetches at once
}

// MetricsConfig is the observability endpoint of a mount.
type MetricsConfig struct {
	// Addr is host:port for /metrics, /healthz, /readyz, /status
	// (observation only; actions are on the control socket); "" (default)
	// is off. Anything but a loopback address is warned about at start.
	Addr string `toml:"addr"`
}

// PublishConfig is the write path: what bitbake publishes through the mount
// goes to the store through a durable local queue.
type PublishConfig struct {
	Concurrency  int      `toml:"concurrency"`   // uploads at once
	DrainTimeout Duration `toml:"drain_timeout"` // at SIGTERM: how long to keep uploading before exit
	// RecordInterval: the longest a journal record waits for others to
	// share its segment (group commit)
	RecordInterval Duration `toml:"record_interval"`
	WriterID       string   `toml:"writer_id"` // names this mount's journal segments; default: the host name
	// RequireStore refuses to mount when the publish store cannot be
	// reached at start (otherwise the mount comes up degraded).
	RequireStore bool `toml:"require_store"`
	// SignKey is an OpenPGP secret key file: the mount signs what it
	// publishes (a sign-off in the index); "" (default) signs nothing.
	SignKey            string `toml:"sign_key"`
	SignPassphraseFile string `toml:"sign_passphrase_file"` // of SignKey
}

// StoreConfig is one store; stores are listed in trust order.
type StoreConfig struct {
	URL string `toml:"url"` // file:///dir, s3://bucket/prefix, https://host/path
	// Name is the store's short name in logs, metrics, status and the
	// commands' --store NAME; default: derived from the URL (StoreName).
	Name string `toml:"name"`
	// Publish marks the one store that receives what bitbake publishes;
	// when no store has it, the first writable store does.
	Publish bool `toml:"publish"`
	// ReadOnly keeps every write away from the store (http(s) stores are
	// always read-only).
	ReadOnly bool `toml:"read_only"`
	// EquivalencesFrom says whose hash equivalence records may lead a name
	// to this store's objects: "trusted" (this store's and more trusted
	// stores' records; the default) or "any" (less trusted stores' too).
	EquivalencesFrom string `toml:"equivalences_from"`
	// Keyring is a file or directory of OpenPGP public keys whose
	// signatures count for the store's objects.
	Keyring string `toml:"keyring"`
	// RequireSignoffs: an object is shown only when this many distinct
	// keyring keys signed its bytes; 0 (default) requires nothing.
	RequireSignoffs int      `toml:"require_signoffs"`
	Endpoint        string   `toml:"endpoint"`          // s3: custom endpoint of an S3-compatible server
	Region          string   `toml:"region"`            // s3
	PathStyle       bool     `toml:"path_style"`        // s3: path-style addressing
	Profile         string   `toml:"profile"`           // s3: shared config profile
	CABundle        string   `toml:"ca_bundle"`         // s3, https: extra CA certificates (PEM)
	BearerTokenFile string   `toml:"bearer_token_file"` // https: file holding a bearer token
	Netrc           string   `toml:"netrc"`             // https: netrc file for basic auth
	Timeout         Duration `toml:"timeout"`           // deadline of every remote call
	MaxConnections  int      `toml:"max_connections"`
}

// CacheConfig is the local disk cache.
type CacheConfig struct {
	Dir  string `toml:"dir"`
	Size Size   `toml:"size"`
}

// IndexConfig is how the index is used.
type IndexConfig struct {
	RefreshInterval Duration `toml:"refresh_interval"`
	MaxAge          Duration `toml:"max_age"`          // fresh while the last load is younger; 0: 3 x refresh_interval
	NegativeTTL     Duration `toml:"negative_ttl"`     // stores without a fresh index: how long an absent answer is kept
	CompactInterval Duration `toml:"compact_interval"` // how often a mount checks whether to compact the journal; 0 disables
	CompactSegments int      `toml:"compact_segments"` // compact once this many segments are applied on the snapshot; 0 disables
	CompactBytes    Size     `toml:"compact_bytes"`    // or this many bytes of segments; 0 disables
}

// MountConfig is the FUSE mount.
type MountConfig struct {
	AllowOther bool   `toml:"allow_other"`
	Owner      string `toml:"owner"`      // uid:gid of store objects; default: the mountpoint's owner
	Debug      bool   `toml:"debug"`      // log every FUSE request
	ReadyFile  string `toml:"ready_file"` // created once the mount is up and its index loaded; removed at shutdown
	// DaemonOpens answers every open in sstatefs (a round trip per open;
	// cached objects are then read by FUSE passthrough) instead of letting
	// the kernel open files by itself and keep their pages across opens.
	DaemonOpens bool `toml:"daemon_opens"`
	// NoPassthrough (with DaemonOpens) keeps reads of cached objects in
	// sstatefs instead of letting the kernel read the cache file directly.
	NoPassthrough bool `toml:"no_passthrough"`
	// ReadAhead is the kernel's read-ahead for the mount (root mounts):
	// the size of the READ requests a streaming reader causes. 0 leaves
	// the kernel's default (128KiB).
	ReadAhead Size `toml:"read_ahead"`
}

// LogConfig is logging.
type LogConfig struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
}

// Duration is a time.Duration written as a string ("30s", "5m"). A value
// that does not parse is kept aside and reported by Validate, so that every
// problem of a file shows at once.
type Duration struct {
	time.Duration
	invalid string
}

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		d.invalid = string(b)
		return nil
	}
	d.Duration, d.invalid = v, ""
	return nil
}

func (d Duration) check(key string) error {
	if d.invalid != "" {
		return fmt.Errorf("%s: invalid duration %q (want e.g. \"30s\", \"5m\")", key, d.invalid)
	}
	if d.Duration < 0 {
		return fmt.Errorf("%s must not be negative", key)
	}
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Size is a byte count written with an optional unit ("20GiB", "500MB");
// invalid values are reported by Validate, like those of Duration.
type Size struct {
	Bytes   int64
	invalid string
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

func (s *Size) UnmarshalText(b []byte) error {
	str := strings.TrimSpace(string(b))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(str, u.suffix) {
			str, mult = strings.TrimSpace(strings.TrimSuffix(str, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(str, 64)
	if err != nil || v < 0 || v*float64(mult) > 1<<62 {
		s.invalid = string(b)
		return nil
	}
	s.Bytes, s.invalid = int64(v*float64(mult)), ""
	return nil
}

func (s Size) check(key string) error {
	if s.invalid != "" {
		return fmt.Errorf("%s: invalid size %q (want e.g. \"20GiB\", \"500MB\")", key, s.invalid)
	}
	return nil
}

func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s Size) String() string {
	for _, u := range sizeUnits[:4] {
		if s.Bytes >= u.mult && s.Bytes%u.mult == 0 && u.mult*1024 > s.Bytes {
			return fmt.Sprintf("%d%s", s.Bytes/u.mult, u.suffix)
		}
	}
	return strconv.FormatInt(s.Bytes, 10)
}

// DataDir is where the embedded default store lives.
func DataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "sstatefs")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "/var/lib/sstatefs"
	}
	return filepath.Join(home, ".local", "share", "sstatefs")
}

// CacheDir is the default cache directory.
func CacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "sstatefs")
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "sstatefs")
	}
	return "/var/cache/sstatefs"
}

// Defaults returns the configuration with no file and no flags: the
// embedded default store under the user's data directory. Every value
// comes from the table (Settings).
func Defaults() Config {
	var c Config
	c.Stores = []StoreConfig{{}}
	for _, st := range Settings() {
		if d := st.defaultValue(); d != "" && !st.perStore() {
			// the table's defaults are checked by TestDefaultsParse
			_ = st.set(&c, d)
		}
	}
	return c
}

func defaultWriterID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "sstatefs"
	}
	return h
}

// StoreDefaults fills what a store entry left out, from the table.
func StoreDefaults(s *StoreConfig) {
	for _, st := range Settings() {
		d := st.defaultValue()
		if !st.perStore() || d == "" || !reflect.ValueOf(st.store(s)).Elem().IsZero() {
			continue
		}
		_ = setValue(st.store(s), d)
	}
	if s.Region == "" && strings.HasPrefix(s.URL, "s3://") {
		s.Region = os.Getenv("AWS_REGION")
		if s.Region == "" {
			s.Region = "us-east-1"
		}
	}
}

// SystemFile is the configuration file read when neither --config nor
// $SSTATEFS_CONFIG names one, if it exists.
const SystemFile = "/etc/sstatefs/sstatefs.toml"

// configPath picks the file: --config, else $SSTATEFS_CONFIG, else the
// system file if it exists. explicit is false for the system file, whose
// absence is not an error.
func configPath(flagValue string) (path string, explicit bool) {
	if flagValue != "" {
		return flagValue, true
	}
	if env := os.Getenv("SSTATEFS_CONFIG"); env != "" {
		return env, true
	}
	return SystemFile, false
}

// LoadFile decodes a TOML file strictly into cfg: unknown keys are errors,
// and every problem is reported at once.
func LoadFile(cfg *Config, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return decodeTOML(cfg, path, string(data))
}

func decodeTOML(cfg *Config, path, data string) error {
	// A file that lists stores replaces the default store list.
	var fileCfg Config
	fileCfg.Cache, fileCfg.Index, fileCfg.Mount, fileCfg.Publish, fileCfg.Metrics, fileCfg.Prefetch, fileCfg.Hashserv, fileCfg.Log = cfg.Cache, cfg.Index, cfg.Mount, cfg.Publish, cfg.Metrics, cfg.Prefetch, cfg.Hashserv, cfg.Log
	// The file is parsed first (a syntax error stops everything: nothing
	// after it can be read), then decoded key by key, so that a value of
	// the wrong type or an unknown key does not hide the problems of the
	// other keys: toml.Decode into the struct stops at the first.
	var raw map[string]toml.Primitive
	md, err := toml.Decode(data, &raw)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	errs := decodeTable(&md, raw, reflect.ValueOf(&fileCfg).Elem(), "", "")
	if fileCfg.Stores == nil {
		fileCfg.Stores = cfg.Stores
	}
	*cfg = fileCfg
	for i, e := range errs {
		errs[i] = fmt.Errorf("config %s: %w", path, e)
	}
	return errors.Join(errs...)
}

var textUnmarshaler = reflect.TypeFor[interface{ UnmarshalText([]byte) error }]()

// decodeTable decodes the keys of one TOML table into the struct v, whose
// fields carry toml tags, and returns one error per bad key: unknown, or of
// the wrong type. Sections (structs) and arrays of tables (slices of
// structs) are decoded recursively; prefix is the dotted key of the table,
// where says which element of an array it is.
func decodeTable(md *toml.MetaData, raw map[string]toml.Primitive, v reflect.Value, prefix, where string) []error {
	fields := map[string]int{}
	for i := 0; i < v.NumField(); i++ {
		if tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("toml"), ","); tag != "" && tag != "-" {
			fields[tag] = i
		}
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		name := prefix + k
		i, ok := fields[k]
		if !ok {
			errs = append(errs, fmt.Errorf("unknown key %q%s", name, where))
			continue
		}
		f := v.Field(i)
		isText := f.Addr().Type().Implements(textUnmarshaler)
		switch {
		case f.Kind() == reflect.Struct && !isText:
			var sub map[string]toml.Primitive
			if err := md.PrimitiveDecode(raw[k], &sub); err != nil {
				errs = append(errs, fmt.Errorf("%s%s: want a table ([%s])", name, where, name))
				continue
			}
			errs = append(errs, decodeTable(md, sub, f, name+".", where)...)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
			var subs []map[string]toml.Primitive
			if err := md.PrimitiveDecode(raw[k], &subs); err != nil {
				errs = append(errs, fmt.Errorf("%s%s: want an array of tables ([[%s]])", name, where, name))
				continue
			}
			elems := reflect.MakeSlice(f.Type(), len(subs), len(subs))
			for j, sub := range subs {
				errs = append(errs, decodeTable(md, sub, elems.Index(j), name+".", fmt.Sprintf(" (%s %d)", name, j+1))...)
			}
			f.Set(elems)
		default:
			val := reflect.New(f.Type())
			if err := md.PrimitiveDecode(raw[k], val.Interface()); err != nil {
				errs = append(errs, fmt.Errorf("%s%s: %s", name, where, typeProblem(err, f.Type(), isText)))
				continue
			}
			f.Set(val.Elem())
		}
	}
	return errs
}

// typeProblem says what a key wants, in the words of the README's table,
// rather than the decoder's Go types.
func typeProblem(err error, t reflect.Type, isText bool) string {
	var want string
	switch {
	case isText:
		want = "a string"
		switch t {
		case reflect.TypeFor[Duration]():
			want = `a duration string (e.g. "30s", "5m")`
		case reflect.TypeFor[Size]():
			want = `a size string (e.g. "20GiB", "500MB")`
		}
	case t.Kind() == reflect.String:
		want = "a string"
	case t.Kind() == reflect.Bool:
		want = "true or false"
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		want = "an integer"
	default:
		return err.Error()
	}
	return fmt.Sprintf("want %s (%v)", want, strings.TrimPrefix(err.Error(), "toml: "))
}

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.Stores) == 0 {
		bad("no store configured: set --store or a [[store]] url")
	}
	errs = append(errs, c.validateStores()...)
	if c.Cache.Dir == "" {
		bad("cache.dir is empty")
	}
	// what the table says of each setting: valid durations and sizes,
	// allowed values, minimums
	for _, st := range Settings() {
		if err := st.check(c); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Index.RefreshInterval.invalid == "" && c.Index.RefreshInterval.Duration <= 0 {
		bad("index.refresh_interval must be positive, got %v", c.Index.RefreshInterval)
	}
	if c.Index.CompactSegments < 0 {
		bad("index.compact_segments must be 0 (off) or a segment count, got %d", c.Index.CompactSegments)
	}
	if c.Publish.WriterID == "" {
		bad("publish.writer_id is empty")
	}
	if c.Publish.SignPassphraseFile != "" && c.Publish.SignKey == "" {
		bad("publish.sign_passphrase_file is set without publish.sign_key")
	}
	for _, f := range []struct{ key, path string }{{"publish.sign_key", c.Publish.SignKey}, {"publish.sign_passphrase_file", c.Publish.SignPassphraseFile}} {
		if f.path != "" {
			if _, err := os.Stat(f.path); err != nil {
				bad("%s: %v", f.key, err)
			}
		}
	}
	if c.Mount.Owner != "" {
		if _, _, err := ParseOwner(c.Mount.Owner); err != nil {
			bad("mount.owner: %v", err)
		}
	}
	if c.Hashserv.Group != "" {
		if _, err := LookupGroup(c.Hashserv.Group); err != nil {
			bad("%s: %v", label("hashserv.group"), err)
		}
	}
	if c.Metrics.Addr != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Addr); err != nil {
			bad("metrics.addr %q: want host:port (e.g. 127.0.0.1:9477 or :9477)", c.Metrics.Addr)
		}
	}
	return errors.Join(errs...)
}

// LookupGroup resolves a group name or a numeric gid.
func LookupGroup(s string) (int, error) {
	if gid, err := strconv.ParseUint(s, 10, 31); err == nil {
		return int(gid), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("%q: not a gid, and no such group: %w", s, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("group %q: gid %q is not a number", s, g.Gid)
	}
	return gid, nil
}

// ParseOwner parses "uid:gid" (numbers).
func ParseOwner(s string) (uid, gid uint32, err error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want uid:gid (numbers)", s)
	}
	uv, err1 := strconv.ParseUint(u, 10, 32)
	gv, err2 := strconv.ParseUint(g, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%q: want uid:gid (numbers)", s)
	}
	return uint32(uv), uint32(gv), nil
}
