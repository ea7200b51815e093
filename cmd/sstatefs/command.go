package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/stores"
)

// command is the prologue every subcommand shares: its flags (those of the
// settings it uses, and its own), the configuration they give, a context
// that SIGINT and SIGTERM cancel, its logger, its store, and how it reports
// a problem.
type command struct {
	name  string // "index show"
	flags *pflag.FlagSet
	conf  *config.Flags
	cfg   config.Config // after parse
	// stopAtArg: flags end at the first positional argument (run's COMMAND)
	stopAtArg bool
	// use says which store the command works on (see storeUse); sc is that
	// store after parse, and storeName the --store NAME given, if any.
	use       storeUse
	storeName string
	sc        config.StoreConfig
}

// storeUse is how a command chooses the store it works on among the
// configured ones (in trust order; see config.PublishStore).
type storeUse int

const (
	// firstStore: the first store, as every command did before the
	// store list (commands that have not moved to the list yet).
	firstStore storeUse = iota
	// readsStore: --store NAME, else the publish store, else (no store is
	// writable) the first.
	readsStore
	// writesStore: --store NAME, else the publish store; the store must be
	// writable.
	writesStore
	// publishStore: the publish store, and no other.
	publishStore
	// allStores: --store NAME, else none (sc stays empty): the command
	// works on every store, in trust order.
	allStores
)

// choosesStore says how the command chooses its store (call it before
// parse). For every use but publishStore, --store also takes the name of a
// configured store: --store company picks the store named company among
// those of the file or of --store URL flags. The setting's flag keeps
// taking URLs; a name is taken out of the arguments before the flags are
// parsed, so that the two spellings share one flag, as users expect from
// the configuration's own comments (StoreConfig.Name).
func (c *command) choosesStore(use storeUse) { c.use = use }

// flagsEndAtFirstArg makes the first positional argument end the flags
// (what follows it belongs to it), as run's COMMAND needs.
func (c *command) flagsEndAtFirstArg() {
	c.stopAtArg = true
	c.flags.SetInterspersed(false)
}

// newCommand makes the flag set of a subcommand with the flags of the
// settings in uses (sections or keys, see config.NewFlags). doc is its help
// text up to the list of flags.
func newCommand(name, doc string, uses ...string) *command {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false // in the order of the table, related flags together
	c := &command{name: name, flags: fs, conf: config.NewFlags(fs, uses...)}
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), strings.TrimRight(doc, "\n")+"\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return c
}

// parse parses args, checks that there are minArgs to maxArgs positional
// arguments (maxArgs < 0: no limit), loads the configuration and runs check
// (the command's own rules, may be nil). On a problem it reports it and
// returns false: the command then exits with status 2.
func (c *command) parse(args []string, minArgs, maxArgs int, check func() error) bool {
	args = longFlags(c.flags, args, c.stopAtArg)
	if c.use != firstStore && c.use != publishStore {
		var err error
		if args, c.storeName, err = takeStoreName(c.flags, args); err != nil {
			fmt.Fprintf(c.flags.Output(), "sstatefs %s: %v\n", c.name, err)
			return false
		}
	}
	if err := c.flags.Parse(args); err != nil {
		if !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(c.flags.Output(), "sstatefs %s: %v\n", c.name, err)
			c.flags.Usage()
		}
		return false
	}
	if n := c.flags.NArg(); n < minArgs || maxArgs >= 0 && n > maxArgs {
		c.flags.Usage()
		return false
	}
	cfg, err := c.conf.Load()
	if err == nil {
		c.cfg = cfg
		c.sc, err = c.chooseStore()
	}
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		c.report(err)
		return false
	}
	return true
}

// storeChoiceDoc is the help text of how a command of use chooses its
// store.
func storeChoiceDoc(use storeUse) string {
	const url = "\n--store URL works on that store instead of the configured ones."
	switch use {
	case readsStore:
		return "\n--store NAME works on the configured store of that name; default: the publish store (the one\nwith publish = true, else the first writable one), else the first store." + url
	case writesStore:
		return "\n--store NAME works on the configured store of that name, which must be writable; default: the\npublish store (the one with publish = true, else the first writable one)." + url
	case publishStore:
		return "\nIt goes to the publish store: the one with publish = true, else the first writable one."
	case allStores:
		return "\n--store NAME works on the configured store of that name alone; default: every store, in\ntrust order." + url
	}
	return ""
}

// takeStoreName takes --store NAME (a value with the syntax of a store
// name) out of args, which longFlags has made --long; store URLs stay.
func takeStoreName(fs *pflag.FlagSet, args []string) (rest []string, name string, err error) {
	rest = make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(rest, args[i:]...), name, nil
		}
		flag, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		f := fs.Lookup(flag)
		takesValue := strings.HasPrefix(a, "--") && f != nil && f.NoOptDefVal == "" && !hasValue && i+1 < len(args)
		if takesValue {
			value = args[i+1]
		}
		if strings.HasPrefix(a, "--") && flag == "store" && (hasValue || takesValue) && config.ValidName(value) {
			if name != "" && name != value {
				return nil, "", fmt.Errorf("--store %s and --store %s: give one store name (the store to work on)", name, value)
			}
			name = value
		} else {
			rest = append(rest, a)
			if takesValue {
				rest = append(rest, value)
			}
		}
		if takesValue {
			i++
		}
	}
	return rest, name, nil
}

// errNoWritableStore: a command that writes into a store found none.
var errNoWritableStore = errors.New("no writable store")

// chooseStore picks the store of the command's storeUse in c.cfg.
func (c *command) chooseStore() (config.StoreConfig, error) {
	cfg := &c.cfg
	if len(cfg.Stores) == 0 {
		return config.StoreConfig{}, nil // Validate said so
	}
	i := -1
	switch {
	case c.use == firstStore:
		i = 0
	case c.storeName != "":
		var err error
		if i, err = cfg.StoreNamed(c.storeName); err != nil {
			return config.StoreConfig{}, fmt.Errorf("--store %s: %w", c.storeName, err)
		}
	case c.use == allStores:
		return config.StoreConfig{}, nil
	default:
		if i = cfg.PublishStore(); i < 0 && c.use == readsStore {
			i = 0
		}
	}
	if i < 0 {
		what := c.name + " writes into its store: pass --store NAME of a writable store"
		if c.use == publishStore {
			what = c.name + " goes to the publish store: the one with publish = true, else the first writable one"
		}
		return config.StoreConfig{}, fmt.Errorf("%w (%s): %s (not read_only, not an http(s) mirror)",
			errNoWritableStore, describeStores(cfg.Stores), what)
	}
	sc := cfg.Stores[i]
	if c.use == writesStore && !sc.Writable() {
		return config.StoreConfig{}, fmt.Errorf("store %s: %w (%s): %s writes into its store: pass --store NAME of a writable store",
			storeLabel(sc), backend.ErrReadOnly, readOnlyWhy(sc), c.name)
	}
	return sc, nil
}

// storeLabel names a store in messages: its name and its URL without
// secrets.
func storeLabel(sc config.StoreConfig) string {
	return fmt.Sprintf("%s (%s)", config.StoreName(sc), stores.Name(sc))
}

// readOnlyWhy says why a store takes no writes.
func readOnlyWhy(sc config.StoreConfig) string {
	if sc.ReadOnly {
		return "read_only = true"
	}
	return "an http(s) mirror"
}

// describeStores lists the stores for an error: label and, for those that
// take no writes, why.
func describeStores(scs []config.StoreConfig) string {
	var parts []string
	for _, sc := range scs {
		p := storeLabel(sc)
		if !sc.Writable() {
			p += ": " + readOnlyWhy(sc)
		}
		parts = append(parts, p)
	}
	return "stores: " + strings.Join(parts, "; ")
}

// longFlags accepts the single-dash long flags of Go's flag package that
// the commands took before (-store URL): each becomes --store URL. pflag
// would read it as the shorthands -s -t -o -r -e. Arguments after the
// first positional one are left alone when the flag set stops there
// (run's command line).
func longFlags(fs *pflag.FlagSet, args []string, stopAtArg bool) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			if a == "--" || stopAtArg {
				return append(out, args[i:]...)
			}
			out = append(out, a)
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := fs.Lookup(name)
		if f != nil && !strings.HasPrefix(a, "--") {
			a = "-" + a
		}
		out = append(out, a)
		if f != nil && !hasValue && f.NoOptDefVal == "" && i+1 < len(args) {
			// the flag's value, whatever it looks like
			i++
			out = append(out, args[i])
		}
	}
	return out
}

// report prints a problem the way every subcommand does.
func (c *command) report(err error) {
	fmt.Fprintf(os.Stderr, "sstatefs %s: %v\n", c.name, err)
}

// fail reports err and returns the exit status of a failed command.
func (c *command) fail(err error) int {
	c.report(err)
	return 1
}

// signalContext is cancelled by SIGINT and SIGTERM.
func (c *command) signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// logger logs as the configuration says.
func (c *command) logger() *slog.Logger { return newLogger(c.cfg.Log) }

// store opens the store the command works on (see choosesStore).
func (c *command) store(ctx context.Context) (backend.Store, error) {
	return stores.Open(ctx, c.sc)
}

// announce says on stderr which store the command works on.
func (c *command) announce() {
	fmt.Fprintf(os.Stderr, "sstatefs %s: store %s\n", c.name, storeLabel(c.sc))
}

// open is the start of a command that works on one store: a context that
// SIGINT and SIGTERM cancel (stop releases them; call it also on error)
// and its store, announced on stderr.
func (c *command) open() (ctx context.Context, stop context.CancelFunc, store backend.Store, err error) {
	ctx, stop = c.signalContext()
	c.announce()
	store, err = c.store(ctx)
	return ctx, stop, store, err
}

// arg is the i-th positional argument.
func (c *command) arg(i int) string { return c.flags.Arg(i) }
