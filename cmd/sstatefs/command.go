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
}

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
	if err := c.flags.Parse(longFlags(c.flags, args, c.stopAtArg)); err != nil {
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
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		c.report(err)
		return false
	}
	c.cfg = cfg
	return true
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

// store opens the (first) store.
func (c *command) store(ctx context.Context) (backend.Store, error) {
	return stores.Open(ctx, c.cfg.Stores[0])
}

// open is the start of a command that works on the store: a context that
// SIGINT and SIGTERM cancel (stop releases them; call it also on error)
// and the (first) store.
func (c *command) open() (ctx context.Context, stop context.CancelFunc, store backend.Store, err error) {
	ctx, stop = c.signalContext()
	store, err = c.store(ctx)
	return ctx, stop, store, err
}

// arg is the i-th positional argument.
func (c *command) arg(i int) string { return c.flags.Arg(i) }
