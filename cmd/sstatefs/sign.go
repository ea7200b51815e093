package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/units"
	"github.com/sstatefs/sstatefs/signing"
	"github.com/sstatefs/sstatefs/transfer"
	"github.com/sstatefs/sstatefs/view"
)

func cmdSign(args []string) int { return sign(args, os.Stdout, os.Stderr) }

// selectionFlags are the flags that choose objects, as promote's.
type selectionFlags struct {
	list, since *string
	all         *bool
}

// parse reads the selection; badLines counts the lines of --list that
// were skipped (each reported on stderr).
func (f selectionFlags) parse(cmd string, stderr io.Writer, needOne bool) (sel transfer.Selection, badLines int, err error) {
	n := 0
	for _, given := range []bool{*f.list != "", *f.since != "", f.all != nil && *f.all} {
		if given {
			n++
		}
	}
	switch {
	case n > 1:
		return sel, 0, errors.New("--list, --accessed-since and --all select differently: give one")
	case n == 0 && needOne:
		return sel, 0, errors.New("choose the objects: --list FILE, --all or --accessed-since D")
	}
	if *f.since != "" {
		if sel.AccessedSince, err = parseSince(*f.since, time.Now()); err != nil {
			return sel, 0, err
		}
	}
	if *f.list != "" {
		keys, bad, err := readList(*f.list)
		if err != nil {
			return sel, 0, fmt.Errorf("--list: %w", err)
		}
		for _, b := range bad {
			fmt.Fprintf(stderr, "sstatefs %s: --list %s\n", cmd, b)
		}
		if len(keys) == 0 {
			return sel, 0, fmt.Errorf("--list %s: no object named (%d bad lines)", *f.list, len(bad))
		}
		sel.Keys, badLines = keys, len(bad)
	}
	return sel, badLines, nil
}

// sign is the sign command writing its results to stdout and its problems
// to stderr.
func sign(args []string, stdout, stderr io.Writer) int {
	c := newCommand("sign", `Usage: sstatefs sign --store NAME --key FILE [--passphrase-file F] (--list FILE | --all | --accessed-since D) [flags]

Adds a sign-off by an OpenPGP key to sstate archives of a writable store: each archive is
downloaded, checked against the store's index digest (bytes that do not match are reported and
never signed) and signed; the detached signature is recorded in the store's index journal, where
a store policy (keyring, require_signoffs) counts it and the mount presents it in the archive's
.sig. Archives this key signed already (the same bytes) are skipped, so running it again after
an interruption signs only what is left.

Objects: every archive of the index (--all), those listed in --list (store keys or bare sstate
file names, one a line; # comments), or those bitbake used since --accessed-since (a date
2026-11-01, a time 2026-11-01T08:00:00Z, or a duration ago such as 720h).
Exit status: 0 done, 1 something failed, did not match its digest or a listed object is missing,
2 refused.`+storeChoiceDoc(writesStore), "store", "log", "publish.writer_id")
	// readsStore, and the store's writability checked below: the refusal
	// then goes to stderr with the command's other refusals.
	c.choosesStore(readsStore)
	key := c.flags.String("key", "", "OpenPGP secret key file to sign with (armored or binary, gpg --export-secret-keys); default: publish.sign_key")
	passFile := c.flags.String("passphrase-file", "", "file holding the key's passphrase; default: publish.sign_passphrase_file")
	sf := selectionFlags{
		list:  c.flags.String("list", "", "file with the objects to sign, one store key or sstate file name a line (- for stdin)"),
		all:   c.flags.Bool("all", false, "sign every archive of the store's index"),
		since: c.flags.String("accessed-since", "", "sign the archives used since this date, time or duration ago"),
	}
	dryRun := c.flags.Bool("dry-run", false, "list what would be signed; sign nothing")
	jobs := c.flags.Int("jobs", 8, "objects read and signed at once")
	quiet := c.flags.Bool("quiet", false, "no progress bar")
	if !c.parse(args, 0, 0, checkJobs(jobs)) {
		return 2
	}
	refuse, fail := exitWith("sign", stderr, 2), exitWith("sign", stderr, 1)
	sel, badLines, err := sf.parse("sign", stderr, true)
	if *key == "" {
		*key, *passFile = c.cfg.Publish.SignKey, c.cfg.Publish.SignPassphraseFile
		if *key == "" {
			err = errors.Join(err, errors.New("--key names the secret key to sign with (or set publish.sign_key)"))
		}
	}
	if !c.sc.Writable() {
		err = errors.Join(err, fmt.Errorf("store %s: %w (%s): sign records sign-offs in the store's index journal: pass --store NAME of a writable store",
			storeLabel(c.sc), backend.ErrReadOnly, readOnlyWhy(c.sc)))
	}
	if err != nil {
		return refuse(err)
	}
	// The signing package names the files and the key's fingerprint in
	// its errors, never the passphrase.
	signer, err := signing.LoadSigner(*key, *passFile)
	if err != nil {
		return refuse(err)
	}
	name := storeLabel(c.sc)
	if c.sc.Keyring != "" {
		// A sign-off counts only for a key of the store's keyring: say so
		// before the work, not after.
		if kr, err := signing.LoadKeyring(c.sc.Keyring); err == nil {
			if _, ok := kr.Lookup(signer.Fingerprint()); !ok {
				fmt.Fprintf(stderr, "sstatefs sign: warning: %s is not in the keyring of %s (%s): its sign-offs do not count for the store's policy until the keyring holds its public key\n",
					signer.Fingerprint(), name, c.sc.Keyring)
			}
		}
	}
	ctx, stop, store, err := c.open()
	defer stop()
	if err != nil {
		return fail(err)
	}
	ix, err := indexOf(ctx, store)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", name, err))
	}
	if ix == nil {
		return fail(fmt.Errorf("%s: %w: sign-offs are checked against its digests (create one with: sstatefs index build --store %s)", name, transfer.ErrNoIndex, config.StoreName(c.sc)))
	}
	var journal *index.Journal
	var later *index.Later
	if !*dryRun {
		journal = index.NewJournal(store, index.JournalOptions{Writer: c.cfg.Publish.WriterID, Logger: c.logger()})
		later = journal.Later()
	}
	progress, finish := bytesBar(progressOut(*quiet || *dryRun), "signing")
	start := time.Now()
	opt := transfer.SignOptions{Store: store, Index: ix, Key: signer, Selection: sel,
		DryRun: *dryRun, Jobs: *jobs, Progress: progress, Logger: c.logger()}
	if later != nil {
		opt.Recorder = later
	}
	res, err := transfer.Sign(ctx, opt)
	finish()
	if later != nil {
		// The sign-offs are in the journal's batches: write them even
		// after a signal (the signatures are made), on a context of
		// their own.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		ferr := later.Flush(fctx)
		cancel()
		if ferr != nil {
			res.Signed = 0
			err = errors.Join(err, fmt.Errorf("writing the sign-offs into the index journal of %s: %w", name, ferr))
		}
	}
	took := time.Since(start).Round(time.Millisecond)
	if *dryRun {
		var size int64
		for _, o := range res.Planned {
			fmt.Fprintf(stdout, "%s\t%s\n", o.Key, units.Bytes(o.Size))
			size += o.Size
		}
		fmt.Fprintf(stdout, "would sign %d archives (%s) of %s with %s; %d signed by it already, %d missing\n",
			len(res.Planned), units.Bytes(size), name, signer.Fingerprint(), res.Already, len(res.Missing))
	} else {
		fmt.Fprintf(stdout, "signed %d archives (%s) of %s with %s in %s; %d signed by it already, %d digest mismatches, %d missing, %d failed\n",
			res.Signed, units.Bytes(res.SignedBytes), name, signer.Fingerprint(), took, res.Already, len(res.Mismatched), len(res.Missing), len(res.Failed))
	}
	for _, k := range res.Mismatched {
		fmt.Fprintf(stderr, "not signed: the bytes do not match the index digest: %s\n", k)
	}
	for _, k := range res.Missing {
		fmt.Fprintf(stderr, "not an archive of the index: %s\n", k)
	}
	status := 0
	switch {
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "sstatefs sign: interrupted (run it again to finish: what is signed is not signed again)\n")
		status = 1
	case err != nil:
		fmt.Fprintf(stderr, "sstatefs sign: %v (run it again to retry)\n", err)
		status = 1
	}
	if len(res.Mismatched) > 0 || len(res.Missing) > 0 {
		status = 1
	}
	if badLines > 0 {
		fmt.Fprintf(stderr, "sstatefs sign: %d bad lines in %s were skipped\n", badLines, *sf.list)
		status = 1
	}
	return status
}

// exitWith returns what reports an error of the command cmd on stderr and
// gives its exit status.
func exitWith(cmd string, stderr io.Writer, status int) func(error) int {
	return func(err error) int {
		fmt.Fprintf(stderr, "sstatefs %s: %v\n", cmd, err)
		return status
	}
}

func cmdVerify(args []string) int { return verify(args, os.Stdout, os.Stderr) }

// verify is the verify command writing its verdicts to stdout and its
// problems to stderr.
func verify(args []string, stdout, stderr io.Writer) int {
	c := newCommand("verify", `Usage: sstatefs verify --store NAME [--keyring PATH] [--require K] [--list FILE | --accessed-since D] [flags]

Checks the sstate archives of a store (every one of its index, or those selected) as a mount
would under the store's signature policy (its keyring and require_signoffs, or --keyring and
--require): each archive is downloaded and checked against its index digest, and the
signatures the mount would present in its .sig (the stored .sig and the sign-offs of keyring
keys) are verified over its bytes. Prints one line per archive: shown, or hidden and why
(unsigned: how many keys of how many required; bad signature: which key and why; digest
mismatch), then a summary.
Exit status: 0 every archive is shown and sound, 1 an archive would be hidden, does not match
its digest, carries a bad signature, or a listed object is missing, 2 refused.`+storeChoiceDoc(readsStore), "store", "log")
	c.choosesStore(readsStore)
	keyring := c.flags.String("keyring", "", "OpenPGP public keys whose signatures count (file or directory); default: the store's keyring")
	require := c.flags.Int("require", -1, "distinct keyring keys an archive needs; default: the store's require_signoffs")
	sf := selectionFlags{
		list:  c.flags.String("list", "", "file with the objects to check, one store key or sstate file name a line (- for stdin)"),
		since: c.flags.String("accessed-since", "", "check the archives used since this date, time or duration ago"),
	}
	jobs := c.flags.Int("jobs", 8, "objects read at once")
	quiet := c.flags.Bool("quiet", false, "no progress bar; print only the archives that are not shown and sound, and the summary")
	if !c.parse(args, 0, 0, checkJobs(jobs)) {
		return 2
	}
	refuse := exitWith("verify", stderr, 2)
	sel, badLines, err := sf.parse("verify", stderr, false)
	if err != nil {
		return refuse(err)
	}
	sc := c.sc
	if *keyring != "" {
		sc.Keyring = *keyring
	}
	if *require >= 0 {
		sc.RequireSignoffs = *require
	}
	var policy *view.Policy
	if sc.Keyring != "" {
		kr, err := signing.LoadKeyring(sc.Keyring)
		if err != nil {
			return refuse(fmt.Errorf("keyring: %w", err))
		}
		if n := len(kr.Keys()); sc.RequireSignoffs > n {
			return refuse(fmt.Errorf("%d sign-offs required, but the keyring %s holds %d keys: no archive could ever be shown", sc.RequireSignoffs, sc.Keyring, n))
		}
		policy = &view.Policy{Keyring: kr, Require: sc.RequireSignoffs}
	} else if sc.RequireSignoffs > 0 {
		return refuse(fmt.Errorf("%d sign-offs required without a keyring: give --keyring (the keys whose signatures count)", sc.RequireSignoffs))
	}
	name := storeLabel(c.sc)
	ctx, stop, store, err := c.open()
	defer stop()
	if err != nil {
		return c.fail(err)
	}
	ix, err := indexOf(ctx, store)
	if err == nil && ix == nil {
		err = fmt.Errorf("%w (create one with: sstatefs index build --store %s)", transfer.ErrNoIndex, config.StoreName(c.sc))
	}
	if err != nil {
		return c.fail(fmt.Errorf("%s: %w", name, err))
	}
	if policy == nil {
		fmt.Fprintf(stderr, "sstatefs verify: %s has no keyring: only the digests are checked (give --keyring to check signatures)\n", name)
	}
	progress, finish := bytesBar(progressOut(*quiet), "verifying")
	start := time.Now()
	res, err := transfer.Verify(ctx, transfer.VerifyOptions{Store: store, Index: ix, Policy: policy, Selection: sel, Jobs: *jobs, Progress: progress})
	finish()
	counts := map[string]int{}
	problems := 0
	for _, v := range res.Verdicts {
		counts[v.Status]++
		if !v.OK() {
			problems++
		} else if *quiet {
			continue
		}
		fmt.Fprintln(stdout, verdictLine(v))
	}
	for _, k := range res.Missing {
		fmt.Fprintf(stderr, "not an archive of the index: %s\n", k)
	}
	required := 0
	if policy != nil {
		required = policy.Require
	}
	fmt.Fprintf(stdout, "verified %d archives of %s (%d sign-offs required) in %s: %d shown, %d hidden unsigned, %d hidden for a bad signature, %d digest mismatches, %d failed; %d with a problem, %d missing\n",
		len(res.Verdicts), name, required, time.Since(start).Round(time.Millisecond), counts[transfer.Shown], counts[view.HiddenUnsigned],
		counts[view.HiddenBadSig], counts[transfer.DigestMismatch], counts[transfer.Unreadable], problems, len(res.Missing))
	if ctx.Err() != nil {
		err = errors.New("interrupted: not every archive was checked")
	}
	if err != nil {
		return exitWith("verify", stderr, 1)(err)
	}
	if problems > 0 || len(res.Missing) > 0 || badLines > 0 {
		return 1
	}
	return 0
}

// verdictLine is one archive's line of verify: status, key, and why.
func verdictLine(v transfer.Verdict) string {
	status := v.Status
	switch v.Status {
	case view.HiddenUnsigned, view.HiddenBadSig:
		status = "hidden: " + v.Status
	case transfer.Shown:
		if v.Detail != "" {
			status = "shown, but bad signature"
		}
	}
	var signers []string
	for _, s := range v.Signers {
		signers = append(signers, s.Fingerprint)
	}
	line := status + "\t" + v.Key
	if v.Detail != "" {
		line += "\t" + v.Detail
	}
	if len(signers) > 0 {
		line += "\tsigned by " + strings.Join(signers, ", ")
	}
	return line
}
