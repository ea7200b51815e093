// Command sstatefs presents a remote object store (S3, an HTTP mirror or a
// local directory) and its index as an ordinary SSTATE_DIR for bitbake.
package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `sstatefs presents a shared sstate store as an ordinary SSTATE_DIR.

Usage:
  sstatefs mount [flags] MOUNTPOINT     mount the stores as one SSTATE_DIR (foreground; Ctrl-C unmounts)
  sstatefs run [flags] -- CMD [ARG...]  mount, run CMD with SSTATE_DIR set, upload, unmount, exit with its status
  sstatefs prefetch [flags] [MOUNTPOINT] fetch objects into a running mount's cache ahead of a build
  sstatefs push [flags] DIR             upload a local sstate-cache to the publish store
  sstatefs export [flags] DIR           write a plain SSTATE_DIR copy of the stores, merged (or of --store NAME, or --list)
  sstatefs promote --from NAME --to NAME copy objects into a more trusted store, verified
  sstatefs sign --store NAME --key FILE add an OpenPGP sign-off to archives of a store (--list, --all, --accessed-since)
  sstatefs verify --store NAME          check a store's archives against its signature policy; what a mount would hide
  sstatefs status [flags] [MOUNTPOINT]  show the live state of a mount (or the queue it left on disk)
  sstatefs hashserv serve [flags]       serve bitbake's hash equivalence protocol from the store's index
  sstatefs hashserv import [flags]      import equivalences from a bitbake-hashserv database or server
  sstatefs index build [flags]          scan the store and write its index into it
  sstatefs index show [flags]           print a summary of the store's index
  sstatefs index compact [flags]        fold the index journal into a new snapshot
  sstatefs version                      print the version

Run "sstatefs COMMAND -h" for the flags of a command.
`

func main() {
	os.Exit(profiled(func() int { return run(os.Args[1:]) }))
}

// profiled runs f, writing a CPU profile of the whole run to the file
// SSTATEFS_CPUPROFILE names, if set ("%p" in it becomes the process id;
// for `go tool pprof`, see bench/README.md).
func profiled(f func() int) int {
	p := os.Getenv("SSTATEFS_CPUPROFILE")
	if p == "" {
		return f()
	}
	p = strings.ReplaceAll(p, "%p", strconv.Itoa(os.Getpid()))
	out, err := os.Create(p)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs: SSTATEFS_CPUPROFILE: %v\n", err)
		return 1
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs: SSTATEFS_CPUPROFILE: %v\n", err)
		return 1
	}
	defer pprof.StopCPUProfile()
	return f()
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "mount":
		return cmdMount(args[1:])
	case "run":
		return cmdRun(args[1:])
	case "prefetch":
		return cmdPrefetch(args[1:])
	case "push":
		return cmdPush(args[1:])
	case "export":
		return cmdExport(args[1:])
	case "promote":
		return cmdPromote(args[1:])
	case "sign":
		return cmdSign(args[1:])
	case "verify":
		return cmdVerify(args[1:])
	case "status":
		return cmdStatus(args[1:])
	case "hashserv":
		return cmdHashserv(args[1:])
	case "index":
		return cmdIndex(args[1:])
	case "version", "--version":
		fmt.Println("sstatefs", version)
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "sstatefs: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
