package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// Flags are the flags of the settings a command uses, bound to its flag
// set. They are applied after the file: only the flags actually given
// override it.
type Flags struct {
	fs       *pflag.FlagSet
	file     string
	settings []*Setting
	values   map[*Setting]*flagValue
	debug    bool // --debug was registered (with mount.debug)
	debugOn  bool
}

// NewFlags registers --config and a flag for each setting whose section
// ("store") or key ("publish.writer_id") is in uses; with no uses, every
// setting. A command registers only what it reads, so that its -h shows
// nothing it would ignore.
func NewFlags(fs *pflag.FlagSet, uses ...string) *Flags {
	f := &Flags{fs: fs, values: map[*Setting]*flagValue{}}
	fs.StringVar(&f.file, "config", "", "configuration file (default $SSTATEFS_CONFIG, else "+SystemFile+")")
	for _, s := range Settings() {
		if len(uses) > 0 && !contains(uses, s.Section()) && !contains(uses, s.Key) {
			continue
		}
		if s.Flag == "" {
			continue // set through another flag (store.name: --store NAME=URL)
		}
		v := &flagValue{s: s, kind: s.flagKind()}
		f.settings = append(f.settings, s)
		f.values[s] = v
		add := func(name, usage string) {
			fl := fs.VarPF(v, name, "", usage)
			if v.kind == "bool" {
				fl.NoOptDefVal = "true"
			}
		}
		add(s.Flag, s.Usage())
		for _, a := range s.Aliases {
			add(a, "same as --"+s.Flag)
		}
		if s.Key == "mount.debug" {
			// a shortcut rather than a setting: two settings at once
			fs.BoolVar(&f.debugOn, "debug", false, "debug logging, including every FUSE request")
			f.debug = true
		}
	}
	return f
}

// Has says whether the flag set carries the setting of key.
func (f *Flags) Has(key string) bool {
	for _, s := range f.settings {
		if s.Key == key {
			return true
		}
	}
	return false
}

// Load builds the configuration: defaults, the file, the flags given; then
// validates. Every problem of the file, the flags and Validate is reported
// at once.
func (f *Flags) Load() (Config, error) {
	cfg := Defaults()
	path, explicit := configPath(f.file)
	var errs []error
	if _, err := os.Stat(path); err == nil || explicit {
		if err := LoadFile(&cfg, path); err != nil {
			errs = append(errs, err)
		}
	}
	// In the order of the table: --store (the list) before the flags that
	// apply to the stores of the list.
	for _, s := range f.settings {
		if !f.changed(s) {
			continue
		}
		if err := s.setAll(&cfg, f.values[s].raws); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", s.Flag, err))
		}
	}
	if f.debug && f.fs.Changed("debug") && f.debugOn {
		cfg.Mount.Debug, cfg.Log.Level = true, "debug"
	}
	for i := range cfg.Stores {
		StoreDefaults(&cfg.Stores[i])
	}
	return cfg, errors.Join(append(errs, cfg.Validate())...)
}

func (f *Flags) changed(s *Setting) bool {
	if f.fs.Changed(s.Flag) {
		return true
	}
	for _, a := range s.Aliases {
		if f.fs.Changed(a) {
			return true
		}
	}
	return false
}

// flagValue holds a flag's text until Load applies it over the file; Set
// rejects what can never be valid (an integer that is not one), the rest
// is left to Validate, which reports it with everything else.
type flagValue struct {
	s    *Setting
	kind string
	raws []string // every occurrence, in order (--store is repeatable)
}

func (v *flagValue) String() string { return strings.Join(v.raws, " ") }
func (v *flagValue) Type() string   { return v.kind }

func (v *flagValue) Set(x string) error {
	if err := v.s.parse(x); err != nil {
		return err
	}
	v.raws = append(v.raws, x)
	return nil
}

// Markdown is the README's table of settings.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| key | flag | environment | default | meaning |\n|---|---|---|---|---|\n")
	for _, s := range Settings() {
		flags := s.FlagDoc
		if s.Flag != "" {
			flags = "`--" + s.Flag + "`"
		}
		for _, a := range s.Aliases {
			flags += ", `--" + a + "`"
		}
		def := s.DefaultDoc
		switch {
		case def != "":
		case s.defaultValue() != "":
			def = "`" + s.defaultValue() + "`"
		case s.kind() == "bool":
			def = "false"
		default:
			def = "none"
		}
		doc := s.Doc
		if doc == "" {
			doc = s.Help
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s | %s |\n", s.Key, flags, s.Env(), def, doc)
	}
	return b.String()
}
