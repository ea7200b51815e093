package contrib

// These tests hold the deployment files to what contrib/README.md promises,
// against the real sstatefs binary (built here as the Containerfile builds
// it): every YAML file parses and has its fields, every flag a file passes
// exists, the TOML sample decodes strictly, the systemd unit verifies and its
// capability set is enough for a mount an unprivileged build publishes
// through, and the container entrypoint mounts, runs, passes exit status and
// signals and drops to the build user. Tests that mount need root and
// /dev/fuse; they skip elsewhere, and fail instead when SSTATEFS_REQUIRE_FUSE=1.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v2"

	"github.com/sstatefs/sstatefs/internal/testutil"
)

const (
	entrypoint  = "container/entrypoint.sh"
	podFile     = "kubernetes/sidecar-pod.yaml"
	gitlabFile  = "gitlab-ci/.gitlab-ci.yml"
	githubFile  = "github-actions/yocto-build.yml"
	kasFile     = "kas/sstatefs.yml"
	snippetFile = "bitbake/local.conf.snippet"
	unitFile    = "systemd/sstatefs.service"
	tomlFile    = "systemd/sstatefs.toml"
	container   = "container/Containerfile"

	nobody = 65534
)

// ---- the binary, built once as the Containerfile builds it ----------------

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// sstatefsBinary builds ./cmd/sstatefs with the Containerfile's flags
// (CGO_ENABLED=0, -trimpath, the version through -ldflags).
func sstatefsBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "sstatefs-contrib-bin-"); binErr != nil {
			return
		}
		// setpriv'd processes (nobody) run it too
		os.Chmod(binDir, 0o755)
		binPath = filepath.Join(binDir, "sstatefs")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version=contrib-test", "-o", binPath, "./cmd/sstatefs")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/sstatefs: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

func contribPath(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(contribPath(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var flagLine = regexp.MustCompile(`(?m)^\s+(?:-[a-z], )?--?([a-z0-9][a-z0-9-]*)`)

// knownFlags are the flags `sstatefs SUB -h` lists.
func knownFlags(t *testing.T, sub string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(sstatefsBinary(t), sub, "-h").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 10 {
		t.Fatalf("sstatefs %s -h lists only %d flags:\n%s", sub, len(flags), out)
	}
	return flags
}

// checkFlags fails for every --flag in args that `sstatefs SUB` does not have.
func checkFlags(t *testing.T, where, sub string, args []string) {
	t.Helper()
	known := knownFlags(t, sub)
	n := 0
	for _, a := range args {
		// long flags only: values such as $(id -u builder) hold short options
		if !strings.HasPrefix(a, "--") || a == "--" {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		n++
		if !known[name] {
			t.Errorf("%s: sstatefs %s has no flag %s", where, sub, a)
		}
	}
	if n == 0 {
		t.Errorf("%s: no flags found for sstatefs %s in %q", where, sub, args)
	}
}

// ---- YAML -----------------------------------------------------------------

// yamlDocs decodes every document of a YAML file into plain maps and slices
// (keys as strings; YAML 1.1 reads a bare `on:` key as true).
func yamlDocs(t *testing.T, rel string) []any {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(readFile(t, rel)))
	dec.SetStrict(true) // duplicate keys are errors
	var docs []any
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		docs = append(docs, plain(v))
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", rel)
	}
	return docs
}

func plain(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, v := range x {
			m[fmt.Sprint(k)] = plain(v)
		}
		return m
	case []any:
		for i := range x {
			x[i] = plain(x[i])
		}
		return x
	}
	return v
}

// get walks maps by key and slices by index ("0").
func get(v any, path ...string) any {
	for _, p := range path {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func strs(v any) []string {
	var out []string
	for _, x := range list(v) {
		out = append(out, str(x))
	}
	return out
}

func TestYAMLFilesParse(t *testing.T) {
	var files []string
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yml") || strings.HasSuffix(p, ".yaml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{podFile, gitlabFile, githubFile, kasFile} {
		found := false
		for _, f := range files {
			found = found || f == want
		}
		if !found {
			t.Errorf("%s is missing", want)
		}
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) { yamlDocs(t, f) })
	}
}

// ---- Kubernetes -----------------------------------------------------------

// podSpec returns the pod spec of a Pod, or of a Job's or Deployment's template.
func podSpec(t *testing.T, docs []any) map[string]any {
	t.Helper()
	for _, d := range docs {
		var spec any
		switch str(get(d, "kind")) {
		case "Pod":
			spec = get(d, "spec")
		case "Job", "Deployment", "StatefulSet":
			spec = get(d, "spec", "template", "spec")
		case "CronJob":
			spec = get(d, "spec", "jobTemplate", "spec", "template", "spec")
		}
		if m, ok := spec.(map[string]any); ok {
			return m
		}
	}
	t.Fatalf("%s: no Pod or workload with a pod template", podFile)
	return nil
}

func containsSeq(args []string, seq ...string) bool {
	for i := 0; i+len(seq) <= len(args); i++ {
		ok := true
		for j := range seq {
			ok = ok && args[i+j] == seq[j]
		}
		if ok {
			return true
		}
	}
	return false
}

// flagValue returns the value of --name in args (--name=v or --name v).
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

func volumeMount(c any, volume string) map[string]any {
	for _, vm := range list(get(c, "volumeMounts")) {
		if str(get(vm, "name")) == volume {
			m, _ := vm.(map[string]any)
			return m
		}
	}
	return nil
}

func TestKubernetesSidecarPod(t *testing.T) {
	spec := podSpec(t, yamlDocs(t, podFile))

	// the sstatefs container: a native sidecar (initContainer, restartPolicy
	// Always), or a second regular container
	var sidecar, build any
	for _, c := range list(spec["initContainers"]) {
		if strings.Contains(strings.Join(strs(get(c, "command")), " "), "sstatefs") && str(get(c, "restartPolicy")) == "Always" {
			sidecar = c
		}
	}
	containers := list(spec["containers"])
	for _, c := range containers {
		if strings.Contains(strings.Join(strs(get(c, "command")), " "), "sstatefs mount") {
			sidecar = c
		} else if build == nil {
			build = c
		}
	}
	if sidecar == nil {
		t.Fatal("no sstatefs sidecar: want an initContainer with restartPolicy: Always running sstatefs mount, or a second container")
	}
	if build == nil {
		t.Fatal("no build container")
	}
	argv := append(strs(get(sidecar, "command")), strs(get(sidecar, "args"))...)
	if !containsSeq(argv, "sstatefs", "mount") {
		t.Fatalf("sidecar does not run `sstatefs mount`: %q", argv)
	}
	mountArgs := argv[2:]
	checkFlags(t, podFile+" sidecar", "mount", mountArgs)
	mountpoint := mountArgs[len(mountArgs)-1]
	if strings.HasPrefix(mountpoint, "-") {
		t.Fatalf("sidecar: last argument %q is not the mountpoint", mountpoint)
	}

	// /dev/fuse from the node, mounted into the sidecar
	fuseVol := ""
	for _, v := range list(spec["volumes"]) {
		if str(get(v, "hostPath", "path")) == "/dev/fuse" {
			fuseVol = str(get(v, "name"))
			if typ := str(get(v, "hostPath", "type")); typ != "CharDevice" {
				t.Errorf("/dev/fuse hostPath volume: type %q, want CharDevice", typ)
			}
		}
	}
	if fuseVol == "" {
		t.Fatal("no hostPath volume for /dev/fuse")
	}
	if vm := volumeMount(sidecar, fuseVol); vm == nil || str(vm["mountPath"]) != "/dev/fuse" {
		t.Errorf("sidecar does not mount the /dev/fuse volume at /dev/fuse: %v", vm)
	}

	// the mount travels through a shared volume: Bidirectional on the sidecar
	// (which the API server allows only privileged), HostToContainer on the build
	var shared, sharedPath string
	for _, vm := range list(get(sidecar, "volumeMounts")) {
		if str(get(vm, "mountPropagation")) == "Bidirectional" {
			shared, sharedPath = str(get(vm, "name")), str(get(vm, "mountPath"))
		}
	}
	if shared == "" {
		t.Fatal("sidecar has no volumeMount with mountPropagation: Bidirectional")
	}
	if p := str(get(sidecar, "securityContext", "privileged")); p != "true" {
		t.Errorf("sidecar: privileged is %q; Bidirectional propagation needs privileged: true", p)
	}
	if mountpoint != sharedPath && !strings.HasPrefix(mountpoint, sharedPath+"/") {
		t.Errorf("mountpoint %s is not inside the propagated volume %s", mountpoint, sharedPath)
	}
	bvm := volumeMount(build, shared)
	if bvm == nil {
		t.Fatalf("build container does not mount volume %s", shared)
	}
	if p := str(bvm["mountPropagation"]); p != "HostToContainer" {
		t.Errorf("build container: mountPropagation %q, want HostToContainer", p)
	}
	sstateDir := ""
	for _, e := range list(get(build, "env")) {
		if str(get(e, "name")) == "SSTATE_DIR" {
			sstateDir = str(get(e, "value"))
		}
		if strings.HasPrefix(str(get(e, "name")), "AWS_") {
			t.Errorf("build container gets store credentials %s; only the sidecar needs them", str(get(e, "name")))
		}
	}
	if want := str(bvm["mountPath"]) + strings.TrimPrefix(mountpoint, sharedPath); sstateDir != want {
		t.Errorf("build container SSTATE_DIR=%q, want the mount at %q", sstateDir, want)
	}

	env := map[string]string{}
	for _, e := range list(get(build, "env")) {
		env[str(get(e, "name"))] = str(get(e, "value"))
	}
	passed := strings.Fields(env["BB_ENV_PASSTHROUGH_ADDITIONS"])
	if !containsSeq(passed, "SSTATE_DIR") {
		t.Error("build container: SSTATE_DIR is not in BB_ENV_PASSTHROUGH_ADDITIONS, so bitbake ignores it")
	}
	// hash equivalence: the sidecar's socket, in a volume both mount at the same place
	if hs, ok := flagValue(mountArgs, "hashserv"); ok {
		sock, isUnix := strings.CutPrefix(hs, "unix://")
		if !isUnix {
			t.Errorf("--hashserv %s: the build container reaches only a unix socket in a shared volume", hs)
		}
		if env["BB_HASHSERVE"] != hs || !containsSeq(passed, "BB_HASHSERVE") {
			t.Errorf("build container: BB_HASHSERVE=%q (passed through: %v), want %q", env["BB_HASHSERVE"], containsSeq(passed, "BB_HASHSERVE"), hs)
		}
		socketShared := false
		for _, vm := range list(get(sidecar, "volumeMounts")) {
			if str(get(vm, "mountPath")) == filepath.Dir(sock) {
				bvm := volumeMount(build, str(get(vm, "name")))
				socketShared = bvm != nil && str(bvm["mountPath"]) == filepath.Dir(sock)
			}
		}
		if !socketShared {
			t.Errorf("the hash equivalence socket %s is not in a volume the build container mounts at %s", sock, filepath.Dir(sock))
		}
	}

	// the build container: unprivileged, as bitbake wants; objects shown as its own
	sc := get(build, "securityContext")
	if uid := str(get(sc, "runAsUser")); uid == "" || uid == "0" {
		t.Errorf("build container runAsUser %q: bitbake refuses root", uid)
	}
	if str(get(sc, "allowPrivilegeEscalation")) != "false" || !strings.Contains(strings.Join(strs(get(sc, "capabilities", "drop")), " "), "ALL") {
		t.Errorf("build container: want allowPrivilegeEscalation: false and capabilities.drop [ALL], got %v", sc)
	}
	if owner, _ := flagValue(mountArgs, "mount-owner"); owner != str(get(sc, "runAsUser"))+":"+str(get(sc, "runAsGroup")) {
		t.Errorf("--mount-owner %q is not the build container's runAsUser:runAsGroup", owner)
	}
	if !containsSeq(mountArgs, "--allow-other") && !containsSeq(mountArgs, "--mount-allow-other") {
		t.Error("sidecar mounts as root for another user without --allow-other")
	}

	// the build starts only once the mount is ready: a startup probe on the
	// ready file of the sidecar
	readyFile, ok := flagValue(mountArgs, "ready-file")
	if !ok {
		readyFile, ok = flagValue(mountArgs, "mount-ready-file")
	}
	if !ok {
		t.Fatal("sidecar has no --ready-file")
	}
	probe := strings.Join(strs(get(sidecar, "startupProbe", "exec", "command")), " ")
	if !strings.Contains(probe, readyFile) || !strings.Contains(probe, "-f") {
		t.Errorf("sidecar startupProbe %q does not test the ready file %s", probe, readyFile)
	}
	if rp := strings.Join(strs(get(sidecar, "readinessProbe", "exec", "command")), " "); rp != "" && !strings.Contains(rp, readyFile) {
		t.Errorf("sidecar readinessProbe %q does not test the ready file %s", rp, readyFile)
	}
	if get(sidecar, "livenessProbe") != nil {
		t.Error("sidecar has a livenessProbe: a restart would leave the build a dead mount")
	}

	// the grace period covers the drain and the unmount
	drain := 30 * time.Second
	if v, ok := flagValue(mountArgs, "publish-drain-timeout"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("--publish-drain-timeout %q: %v", v, err)
		}
		drain = d
	}
	grace, err := strconv.Atoi(str(spec["terminationGracePeriodSeconds"]))
	if err != nil {
		t.Fatalf("terminationGracePeriodSeconds: %v", err)
	}
	if time.Duration(grace)*time.Second <= 30*time.Second || time.Duration(grace)*time.Second < drain+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %d does not cover --publish-drain-timeout %v plus 10s of unmounting", grace, drain)
	}
}

// ---- CI jobs --------------------------------------------------------------

// runInvocation returns the arguments of `sstatefs run` in a script, up to
// the "--" that starts the command, and whether that "--" is there.
func runInvocation(script string) (args []string, dashdash, found bool) {
	i := strings.Index(script, "sstatefs run")
	if i < 0 {
		return nil, false, false
	}
	for _, f := range strings.Fields(script[i+len("sstatefs run"):]) {
		switch f {
		case "\\":
			continue
		case "--":
			return args, true, true
		}
		args = append(args, f)
	}
	return args, false, true
}

func checkRunScript(t *testing.T, where, script string) {
	t.Helper()
	args, dashdash, _ := runInvocation(script)
	if !dashdash {
		t.Errorf("%s: `sstatefs run` without -- before the command", where)
	}
	checkFlags(t, where, "run", args)
	if !strings.Contains(script, "bitbake") && !strings.Contains(script, "kas build") {
		t.Errorf("%s: sstatefs run does not wrap a bitbake build", where)
	}
}

func TestGitLabJob(t *testing.T) {
	doc := yamlDocs(t, gitlabFile)[0].(map[string]any)
	reserved := map[string]bool{"variables": true, "stages": true, "default": true, "include": true, "workflow": true,
		"image": true, "services": true, "cache": true, "before_script": true, "after_script": true}
	jobs := 0
	for name, job := range doc {
		if reserved[name] || strings.HasPrefix(name, ".") || get(job, "script") == nil {
			continue
		}
		if get(job, "cache") != nil {
			t.Errorf("job %s has a cache: (the mount is the sstate cache; nothing else is cached)", name)
		}
		script := strings.Join(strs(get(job, "script")), "\n")
		if _, _, ok := runInvocation(script); ok {
			jobs++
			checkRunScript(t, gitlabFile+" job "+name, script)
		}
	}
	if doc["cache"] != nil || get(doc, "default", "cache") != nil {
		t.Error("a global cache: (nothing is cached besides the mount)")
	}
	if jobs == 0 {
		t.Fatalf("%s: no job whose script runs `sstatefs run`", gitlabFile)
	}
}

func TestGitHubWorkflow(t *testing.T) {
	doc := yamlDocs(t, githubFile)[0]
	if get(doc, "on") == nil && get(doc, "true") == nil {
		t.Error("workflow has no `on:` triggers")
	}
	jobs, _ := get(doc, "jobs").(map[string]any)
	found := 0
	for name, job := range jobs {
		if get(job, "runs-on") == nil {
			t.Errorf("job %s has no runs-on", name)
		}
		for i, step := range list(get(job, "steps")) {
			if uses := str(get(step, "uses")); strings.HasPrefix(uses, "actions/cache") {
				t.Errorf("job %s step %d uses %s (the mount is the sstate cache; nothing else is cached)", name, i, uses)
			}
			run := str(get(step, "run"))
			if _, _, ok := runInvocation(run); ok {
				found++
				checkRunScript(t, fmt.Sprintf("%s job %s step %d", githubFile, name, i), run)
			}
		}
	}
	if found == 0 {
		t.Fatalf("%s: no step that runs `sstatefs run`", githubFile)
	}
}

// ---- bitbake and kas ------------------------------------------------------

var bbAssign = regexp.MustCompile(`^([A-Z][A-Z0-9_]*(?::[a-z0-9_-]+)?)\s*(=|\?=|\?\?=|:=|\+=|=\+|\.=|=\.)\s*"([^"]*)"$`)

// activeLines are the lines of a conf fragment that are not blank or comments.
func activeLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func TestBitbakeSnippetAndKas(t *testing.T) {
	snippet := activeLines(readFile(t, snippetFile))
	vals := map[string]string{}
	for _, l := range snippet {
		m := bbAssign.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("%s: not a bitbake assignment: %q", snippetFile, l)
			continue
		}
		vals[m[1]] = m[3]
	}
	unit := parseUnit(t)
	if mp := unitMountpoint(t, unit); vals["SSTATE_DIR"] != mp {
		t.Errorf("%s: SSTATE_DIR %q is not the mountpoint of %s (%s)", snippetFile, vals["SSTATE_DIR"], unitFile, mp)
	}
	hs, ok := strings.CutPrefix(vals["BB_HASHSERVE"], "unix://")
	if !ok {
		t.Errorf("%s: BB_HASHSERVE %q is not a unix:// socket", snippetFile, vals["BB_HASHSERVE"])
	} else if rd := "/run/" + unit.get("Service", "RuntimeDirectory"); filepath.Dir(hs) != rd {
		t.Errorf("%s: hash equivalence socket %s is not in the unit's RuntimeDirectory %s", snippetFile, hs, rd)
	}
	if hs, ok := flagValue(unitExecStart(t, unit), "hashserv"); !ok || hs != vals["BB_HASHSERVE"] {
		t.Errorf("%s: BB_HASHSERVE %q is not what %s serves (--hashserv %q)", snippetFile, vals["BB_HASHSERVE"], unitFile, hs)
	}
	for _, v := range []string{"BB_HASHSERVE_UPSTREAM"} {
		if !strings.Contains(readFile(t, snippetFile), "# "+v+" = ") {
			t.Errorf("%s: no commented %s variant", snippetFile, v)
		}
	}

	doc := yamlDocs(t, kasFile)[0]
	if v, ok := get(doc, "header", "version").(int); !ok || v < 1 {
		t.Errorf("%s: header.version %v is not a format version", kasFile, get(doc, "header", "version"))
	}
	headers, _ := get(doc, "local_conf_header").(map[string]any)
	if len(headers) == 0 {
		t.Fatalf("%s: no local_conf_header", kasFile)
	}
	var kasLines []string
	for _, h := range headers {
		kasLines = append(kasLines, activeLines(str(h))...)
	}
	if strings.Join(kasLines, "\n") != strings.Join(snippet, "\n") {
		t.Errorf("%s local_conf_header differs from %s:\n%s\nvs\n%s", kasFile, snippetFile, strings.Join(kasLines, "\n"), strings.Join(snippet, "\n"))
	}
}

// ---- systemd --------------------------------------------------------------

type unit map[string]map[string][]string

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func parseUnit(t *testing.T) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(readFile(t, unitFile)))
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" || strings.HasSuffix(l, "\\") {
				t.Fatalf("%s:%d: cannot read %q", unitFile, n, l)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func unitExecStart(t *testing.T, u unit) []string {
	t.Helper()
	f := strings.Fields(u.get("Service", "ExecStart"))
	if len(f) < 3 || filepath.Base(f[0]) != "sstatefs" || f[1] != "mount" {
		t.Fatalf("%s: ExecStart %q is not `sstatefs mount ...`", unitFile, f)
	}
	return f
}

func unitMountpoint(t *testing.T, u unit) string {
	f := unitExecStart(t, u)
	return f[len(f)-1]
}

// systemdSpan reads a systemd time span ("60s", "1min 30s", "90").
func systemdSpan(s string) (time.Duration, error) {
	units := map[string]time.Duration{"": time.Second, "us": time.Microsecond, "ms": time.Millisecond,
		"s": time.Second, "sec": time.Second, "m": time.Minute, "min": time.Minute, "h": time.Hour, "hr": time.Hour}
	re := regexp.MustCompile(`^(\d+)\s*([a-z]*)$`)
	var d time.Duration
	for _, part := range strings.Fields(s) {
		m := re.FindStringSubmatch(part)
		if m == nil || units[m[2]] == 0 {
			return 0, fmt.Errorf("time span %q", s)
		}
		n, _ := strconv.Atoi(m[1])
		d += time.Duration(n) * units[m[2]]
	}
	return d, nil
}

// mountNamespaceOptions give a service its own mount namespace, from which the
// FUSE mount would not propagate to the rest of the system.
var mountNamespaceOptions = []string{"PrivateTmp", "PrivateDevices", "PrivateMounts", "ProtectSystem", "ProtectHome",
	"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
	"ProcSubset", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
	"TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "RootDirectory", "RootImage", "MountAPIVFS",
	"DynamicUser", "PrivateNetwork", "ProtectHostname", "User"}

func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t)
	svc := u["Service"]
	if svc == nil {
		t.Fatal("no [Service]")
	}
	if typ := u.get("Service", "Type"); typ != "simple" {
		t.Errorf("Type=%s: sstatefs does not speak sd_notify; want simple", typ)
	}
	exec := unitExecStart(t, u)
	checkFlags(t, unitFile+" ExecStart", "mount", exec[2:len(exec)-1])
	if !containsSeq(exec, "--allow-other") && !containsSeq(exec, "--mount-allow-other") {
		t.Error("ExecStart without --allow-other: build users could not use the root mount")
	}
	mp := exec[len(exec)-1]
	ready, ok := flagValue(exec, "ready-file")
	if !ok {
		t.Error("ExecStart without --ready-file")
	} else {
		if filepath.Dir(ready) != "/run/"+u.get("Service", "RuntimeDirectory") {
			t.Errorf("ready file %s is not in RuntimeDirectory (removed at stop, so never stale)", ready)
		}
		if !strings.Contains(u.get("Service", "ExecStartPost"), ready) {
			t.Errorf("ExecStartPost does not wait for the ready file %s", ready)
		}
	}
	post := u.get("Service", "ExecStopPost")
	if !strings.HasPrefix(post, "-") || !strings.Contains(post, "fusermount3") || !strings.Contains(post, "-u") ||
		!strings.Contains(post, "-z") || !strings.HasSuffix(post, " "+mp) {
		t.Errorf("ExecStopPost %q: want -/usr/bin/fusermount3 -u -z %s (lazy unmount after a crash, failure ignored)", post, mp)
	}
	if v := u.get("Service", "KillSignal"); v != "SIGTERM" {
		t.Errorf("KillSignal=%s, want SIGTERM (unmount and drain)", v)
	}
	if v := u.get("Service", "Restart"); v != "on-failure" {
		t.Errorf("Restart=%s, want on-failure", v)
	}
	for _, o := range mountNamespaceOptions {
		if v, ok := svc[o]; ok {
			t.Errorf("%s=%s is set: it would hide the mount in a private namespace (or break the mount)", o, v)
		}
	}

	// the stop timeout covers the drain configured in the sample
	var cfg struct {
		Publish struct {
			DrainTimeout string `toml:"drain_timeout"`
		} `toml:"publish"`
	}
	if _, err := toml.Decode(readFile(t, tomlFile), &cfg); err != nil {
		t.Fatal(err)
	}
	drain, err := time.ParseDuration(cfg.Publish.DrainTimeout)
	if err != nil {
		t.Fatalf("%s publish.drain_timeout: %v", tomlFile, err)
	}
	stop, err := systemdSpan(u.get("Service", "TimeoutStopSec"))
	if err != nil {
		t.Fatal(err)
	}
	if stop < drain+10*time.Second {
		t.Errorf("TimeoutStopSec %v does not cover publish.drain_timeout %v plus 10s of unmounting", stop, drain)
	}
}

func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	u := parseUnit(t)
	for _, key := range []string{"ExecStartPost", "ExecStopPost"} {
		p := strings.Fields(strings.TrimLeft(u.get("Service", key), "-@:+!"))[0]
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s needs %s, not installed here", key, p)
		}
	}
	// the unit as installed, with the binary where this test built it
	text := strings.ReplaceAll(readFile(t, unitFile), "/usr/local/bin/sstatefs", sstatefsBinary(t))
	p := filepath.Join(t.TempDir(), "sstatefs.service")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "sstatefs.service") {
			t.Errorf("systemd-analyze verify: %s", l)
		}
	}
}

// runStatus runs `sstatefs status --config FILE --cache-dir DIR`: it loads
// and validates the configuration first (exit 2 with every problem), then
// fails with exit 1 on a directory that is no mount's cache directory.
func runStatus(t *testing.T, config string) (int, string) {
	t.Helper()
	cmd := exec.Command(sstatefsBinary(t), "status", "--config", config, "--cache-dir", filepath.Join(t.TempDir(), "cache"))
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func TestSystemdConfigDecodes(t *testing.T) {
	sample := contribPath(t, tomlFile)
	code, out := runStatus(t, sample)
	if code != 1 || !strings.Contains(out, "not the cache directory") {
		t.Fatalf("%s does not load cleanly (want exit 1, not the cache directory): exit %d\n%s", tomlFile, code, out)
	}

	// the keys shown commented out are real too: uncomment them all
	// (ca_bundle must name a file that exists)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644)
	commented := regexp.MustCompile(`(?m)^# ([a-z_]+ = .*)$`)
	all := commented.ReplaceAllString(readFile(t, tomlFile), "$1")
	all = regexp.MustCompile(`(?m)^ca_bundle = .*$`).ReplaceAllString(all, fmt.Sprintf("ca_bundle = %q", ca))
	if all == readFile(t, tomlFile) {
		t.Error("no commented example keys found")
	}
	p := filepath.Join(t.TempDir(), "all.toml")
	os.WriteFile(p, []byte(all), 0o644)
	if code, out := runStatus(t, p); code != 1 || !strings.Contains(out, "not the cache directory") {
		t.Errorf("%s with its commented keys enabled does not load: exit %d\n%s", tomlFile, code, out)
	}

	// and the check would notice a bad key
	os.WriteFile(p, []byte(readFile(t, tomlFile)+"\n[cache]\nbogus = 1\n"), 0o644)
	if code, out := runStatus(t, p); code != 2 {
		t.Errorf("a broken configuration: exit %d, want 2\n%s", code, out)
	}
}

// ---- Containerfile --------------------------------------------------------

func TestContainerfile(t *testing.T) {
	text := readFile(t, container)
	args := map[string]string{}
	var froms []string
	copied := map[string]string{} // destination -> source
	var entry string
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "ARG":
			if k, v, ok := strings.Cut(f[1], "="); ok {
				args[k] = v
			}
		case "FROM":
			img := f[1]
			for k, v := range args {
				img = strings.ReplaceAll(img, "${"+k+"}", v)
			}
			froms = append(froms, img)
		case "COPY":
			var srcs []string
			from := false
			for _, a := range f[1:] {
				if strings.HasPrefix(a, "--from=") {
					from = true
				}
				if !strings.HasPrefix(a, "--") {
					srcs = append(srcs, a)
				}
			}
			if from || len(srcs) < 2 {
				continue
			}
			for _, s := range srcs[:len(srcs)-1] {
				copied[srcs[len(srcs)-1]] = s
				if _, err := os.Stat(filepath.Join(repoRoot(t), s)); err != nil {
					t.Errorf("COPY %s: not in the repository (the build context is its root): %v", s, err)
				}
			}
		case "ENTRYPOINT":
			entry = strings.TrimSpace(strings.TrimPrefix(l, "ENTRYPOINT"))
		}
	}
	if len(froms) < 2 || !strings.Contains(froms[0], "golang:1.26") || !strings.Contains(froms[len(froms)-1], "debian:bookworm-slim") {
		t.Errorf("stages %q: want golang:1.26 to build and debian:bookworm-slim to run", froms)
	}
	gomod, _ := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod); m == nil || !strings.Contains(froms[0], "golang:"+string(m[1])) {
		t.Errorf("build stage %s does not match the Go version of go.mod", froms[0])
	}
	if !strings.Contains(text, "CGO_ENABLED=0 go build -trimpath") || !strings.Contains(text, "-o /sstatefs ./cmd/sstatefs") {
		t.Error("the build stage does not run CGO_ENABLED=0 go build -trimpath ... -o /sstatefs ./cmd/sstatefs")
	}
	for _, pkg := range []string{"fuse3", "ca-certificates", "tini"} {
		if !regexp.MustCompile(`apt-get install[^\n]*(\\\n[^\n]*)*\b` + pkg + `\b`).MatchString(text) {
			t.Errorf("the runtime stage does not install %s", pkg)
		}
	}
	var ep []string
	if err := yaml.Unmarshal([]byte(entry), &ep); err != nil || len(ep) == 0 {
		t.Fatalf("ENTRYPOINT %q is not an exec-form list: %v", entry, err)
	}
	script := ep[len(ep)-1]
	if copied[script] != "contrib/"+entrypoint {
		t.Errorf("ENTRYPOINT runs %s, which is not contrib/%s copied in (copied: %v)", script, entrypoint, copied)
	}
	if !strings.Contains(ep[0], "tini") {
		t.Errorf("ENTRYPOINT %q: want tini as PID 1 (reaps the build's orphans)", ep)
	}

	// the binary as that stage builds it
	out, err := exec.Command(sstatefsBinary(t), "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "contrib-test") {
		t.Errorf("sstatefs version with -X main.version: %v %s", err, out)
	}
}

// ---- the entrypoint -------------------------------------------------------

func TestScriptsSyntax(t *testing.T) {
	var scripts []string
	filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".sh") {
			scripts = append(scripts, p)
		}
		return nil
	})
	if len(scripts) == 0 {
		t.Fatal("no scripts")
	}
	for _, s := range scripts {
		t.Run(s, func(t *testing.T) {
			fi, err := os.Stat(s)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&0o111 == 0 {
				t.Errorf("%s is not executable", s)
			}
			for _, sh := range []string{"sh", "dash", "bash", "busybox"} {
				path, err := exec.LookPath(sh)
				if err != nil {
					continue
				}
				argv := []string{"-n", s}
				if sh == "busybox" {
					argv = []string{"sh", "-n", s}
				}
				if out, err := exec.Command(path, argv...).CombinedOutput(); err != nil {
					t.Errorf("%s -n %s: %v\n%s", sh, s, err, out)
				}
			}
			sc, err := exec.LookPath("shellcheck")
			if err != nil {
				t.Log("shellcheck not installed; skipped")
				return
			}
			if out, err := exec.Command(sc, "--shell=sh", s).CombinedOutput(); err != nil {
				t.Errorf("shellcheck %s: %v\n%s", s, err, out)
			}
		})
	}
}

var setFlag = regexp.MustCompile(`set -- (--[a-z-]+)`)

// The flags the entrypoint passes exist (the mount tests also run them).
func TestEntrypointFlags(t *testing.T) {
	text := readFile(t, entrypoint)
	if !strings.Contains(text, "exec sstatefs run ") {
		t.Fatal("the entrypoint does not exec sstatefs run (signals would not reach the command)")
	}
	var flags []string
	for _, m := range setFlag.FindAllStringSubmatch(text, -1) {
		flags = append(flags, m[1])
	}
	checkFlags(t, entrypoint, "run", flags)
}

// cleanEnv is the test's environment without SSTATE_DIR and SSTATEFS_*.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "SSTATEFS_") || strings.HasPrefix(e, "SSTATE_DIR=") {
			continue
		}
		env = append(env, e)
	}
	return append(env, extra...)
}

type result struct {
	code           int
	stdout, stderr string
}

// runEntrypoint runs the entrypoint with shell sh, env added to a clean
// environment, and the real sstatefs first on PATH when bin is set.
func runEntrypoint(t *testing.T, sh, bin string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sh, append([]string{contribPath(t, entrypoint)}, args...)...)
	if bin != "" {
		env = append(env, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	}
	cmd.Env = cleanEnv(env...)
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("entrypoint: %v", err)
	}
	return result{cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()}
}

func shells(t *testing.T) []string {
	var out []string
	for _, sh := range []string{"sh", "bash"} {
		if p, err := exec.LookPath(sh); err == nil {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		t.Skip("no sh")
	}
	return out
}

// Errors the entrypoint reports before it mounts anything; no root needed.
func TestEntrypointErrors(t *testing.T) {
	notDev := filepath.Join(t.TempDir(), "fuse")
	os.WriteFile(notDev, nil, 0o666)
	for _, sh := range shells(t) {
		t.Run(filepath.Base(sh), func(t *testing.T) {
			r := runEntrypoint(t, sh, "", nil)
			if r.code != 2 || !strings.Contains(r.stderr, "no command given") {
				t.Errorf("no command: exit %d, want 2 with \"no command given\"\n%s", r.code, r.stderr)
			}
			r = runEntrypoint(t, sh, "", []string{"SSTATEFS_FUSE_DEVICE=/nonexistent/fuse"}, "true")
			if r.code != 1 || !strings.Contains(r.stderr, "/nonexistent/fuse does not exist") ||
				!strings.Contains(r.stderr, "--device /dev/fuse --cap-add SYS_ADMIN") {
				t.Errorf("no FUSE device: exit %d, want 1 with the docker flags\n%s", r.code, r.stderr)
			}
			r = runEntrypoint(t, sh, "", []string{"SSTATEFS_FUSE_DEVICE=" + notDev}, "true")
			if r.code != 1 || !strings.Contains(r.stderr, "not a character device") {
				t.Errorf("FUSE device a regular file: exit %d\n%s", r.code, r.stderr)
			}
		})
	}
}

// requireRootFUSE skips unless the test runs as root with a usable /dev/fuse
// and setpriv; with SSTATEFS_REQUIRE_FUSE=1 it fails instead.
func requireRootFUSE(t *testing.T) {
	t.Helper()
	problem := ""
	if os.Geteuid() != 0 {
		problem = "not root"
	} else if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		problem = fmt.Sprintf("no usable /dev/fuse: %v", err)
	} else {
		f.Close()
		if _, err := exec.LookPath("setpriv"); err != nil {
			problem = "no setpriv (util-linux)"
		}
	}
	if problem == "" {
		return
	}
	if os.Getenv("SSTATEFS_REQUIRE_FUSE") == "1" {
		t.Fatalf("FUSE required (SSTATEFS_REQUIRE_FUSE=1): %s", problem)
	}
	t.Skip(problem)
}

// sandbox is a store, a cache directory and a mountpoint in a directory
// every user can traverse (the build user must reach the mount).
type sandbox struct {
	dir, store, cache, mnt string
}

func newSandbox(t *testing.T) sandbox {
	t.Helper()
	dir, err := os.MkdirTemp("", "sstatefs-contrib-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	s := sandbox{dir: dir, store: filepath.Join(dir, "store"), cache: filepath.Join(dir, "cache"), mnt: filepath.Join(dir, "mnt")}
	os.MkdirAll(s.store, 0o755)
	t.Cleanup(func() {
		if mounted(s.mnt) {
			t.Errorf("%s is still mounted", s.mnt)
			syscall.Unmount(s.mnt, syscall.MNT_DETACH)
		}
		os.RemoveAll(dir)
	})
	return s
}

func (s sandbox) env(extra ...string) []string {
	return append([]string{"SSTATEFS_CONFIG=/dev/null", "SSTATEFS_STORE=file://" + s.store,
		"SSTATEFS_CACHE_DIR=" + s.cache, "SSTATE_DIR=" + s.mnt}, extra...)
}

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mounts")
	return strings.Contains(string(b), " "+dir+" fuse")
}

// testKey is a valid sstate object name.
func testKey(i int, task string) string {
	h := sha256.Sum256([]byte(fmt.Sprint("contrib", i)))
	x := hex.EncodeToString(h[:])
	return "debian-12/" + x[0:2] + "/" + x[2:4] + "/sstate:probe" + fmt.Sprint(i) + "-native:x86_64-linux:1.0:r0:x86_64:14:" + x + "_" + task + ".tar.zst"
}

// publishScript is bitbake's publish of "$1" under $SSTATE_DIR in shell:
// mkdir levels, an O_EXCL temp file, chmod 0664, link, unlink; the siginfo by
// rename; it prints the owner of the published object.
const publishScript = `set -e
k="$1"; d="$SSTATE_DIR/$(dirname "$k")"; f="$SSTATE_DIR/$k"
mkdir -p "$d"
(set -C; printf 'payload of %s' "$k" > "$f.tmpXYZ12")
chmod 0664 "$f.tmpXYZ12"
ln "$f.tmpXYZ12" "$f"
touch "$f.tmpXYZ12"
rm "$f.tmpXYZ12"
t=$(mktemp "$d/sigXXXXXX"); echo siginfo > "$t"; chmod 0664 "$t"; mv "$t" "$f.siginfo"
touch "$f"
echo "owner=$(stat -c %u "$f")"
`

func TestEntrypointMount(t *testing.T) {
	requireRootFUSE(t)
	bin := sstatefsBinary(t)

	t.Run("runs the command on the mount", func(t *testing.T) {
		for _, sh := range shells(t) {
			s := newSandbox(t)
			r := runEntrypoint(t, sh, bin, s.env(), "sh", "-c", `test -n "$SSTATE_DIR" && grep -q " $SSTATE_DIR fuse" /proc/mounts && echo ok`)
			if r.code != 0 || strings.TrimSpace(r.stdout) != "ok" {
				t.Errorf("%s: exit %d, stdout %q\n%s", sh, r.code, r.stdout, r.stderr)
			}
		}
	})

	t.Run("exit status", func(t *testing.T) {
		s := newSandbox(t)
		if r := runEntrypoint(t, "sh", bin, s.env(), "sh", "-c", "exit 7"); r.code != 7 {
			t.Errorf("exit %d, want 7\n%s", r.code, r.stderr)
		}
		if r := runEntrypoint(t, "sh", bin, s.env(), "/nonexistent/tool"); r.code != 127 {
			t.Errorf("missing command: exit %d, want 127\n%s", r.code, r.stderr)
		}
		if r := runEntrypoint(t, "sh", bin, s.env("SSTATEFS_BUILD_USER=nobody"), "/nonexistent/tool"); r.code != 127 {
			t.Errorf("missing command as the build user: exit %d, want 127\n%s", r.code, r.stderr)
		}
	})

	t.Run("build user", func(t *testing.T) {
		s := newSandbox(t)
		// an object already in the store, shown as the build user's
		old := testKey(1, "populate_sysroot")
		os.MkdirAll(filepath.Join(s.store, filepath.Dir(old)), 0o755)
		os.WriteFile(filepath.Join(s.store, old), []byte("old object"), 0o644)
		key := testKey(2, "populate_sysroot")
		r := runEntrypoint(t, "sh", bin, s.env("SSTATEFS_BUILD_USER=nobody"), "sh", "-c", `
id -u
grep " $SSTATE_DIR fuse" /proc/mounts
echo "store-object-owner=$(stat -c %u "$SSTATE_DIR/$2") $(cat "$SSTATE_DIR/$2")"
`+publishScript, "sh", key, old)
		if r.code != 0 {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if lines[0] != fmt.Sprint(nobody) {
			t.Errorf("the command ran as uid %s, want %d (nobody)", lines[0], nobody)
		}
		if !strings.Contains(r.stdout, "user_id=0,") || !strings.Contains(r.stdout, "allow_other") {
			t.Errorf("want root's mount with allow_other:\n%s", r.stdout)
		}
		if !strings.Contains(r.stdout, fmt.Sprintf("store-object-owner=%d old object", nobody)) {
			t.Errorf("store objects are not shown as the build user's (--mount-owner):\n%s", r.stdout)
		}
		if !strings.Contains(r.stdout, fmt.Sprintf("owner=%d\n", nobody)) {
			t.Errorf("the published object does not belong to the build user:\n%s", r.stdout)
		}
		// sstatefs run uploaded it before the entrypoint returned
		if b, err := os.ReadFile(filepath.Join(s.store, key)); err != nil || string(b) != "payload of "+key {
			t.Errorf("published object not in the store at exit: %q %v\n%s", b, err, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(s.store, key+".siginfo")); err != nil {
			t.Errorf("siginfo not in the store at exit: %v", err)
		}
	})

	t.Run("SIGTERM reaches the command", func(t *testing.T) {
		s := newSandbox(t)
		cmd := exec.Command("sh", contribPath(t, entrypoint), "sh", "-c",
			`trap 'echo got-TERM; exit 143' TERM; echo started; while :; do sleep 0.1; done`)
		cmd.Env = cleanEnv(append(s.env("SSTATEFS_BUILD_USER=nobody"), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))...)
		cmd.Dir = "/"
		var out testutil.SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(out.String(), "started") {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("command did not start:\n%s", out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGTERM) // the entrypoint's pid: sstatefs run, after exec
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
			t.Fatalf("no exit after SIGTERM:\n%s", out.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 143 || !strings.Contains(out.String(), "got-TERM") {
			t.Errorf("after SIGTERM: exit %d, want 143 from the command's trap\n%s", code, out.String())
		}
	})

	t.Run("no CAP_SYS_ADMIN", func(t *testing.T) {
		s := newSandbox(t)
		cmd := exec.Command("setpriv", "--bounding-set=-sys_admin", "sh", contribPath(t, entrypoint), "true")
		cmd.Env = cleanEnv(append(s.env(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "CAP_SYS_ADMIN") ||
			!strings.Contains(string(out), "--cap-add SYS_ADMIN") {
			t.Errorf("exit %d, want 1 naming CAP_SYS_ADMIN and --cap-add SYS_ADMIN\n%s", code, out)
		}
	})

	t.Run("started as a user who cannot open /dev/fuse", func(t *testing.T) {
		if fi, err := os.Stat("/dev/fuse"); err != nil || fi.Mode().Perm()&0o006 == 0o006 {
			t.Skip("/dev/fuse is usable by everyone here")
		}
		s := newSandbox(t)
		for _, sh := range shells(t) {
			cmd := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", nobody), fmt.Sprintf("--regid=%d", nobody), "--clear-groups",
				sh, contribPath(t, entrypoint), "true")
			cmd.Env = cleanEnv(append(s.env(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))...)
			cmd.Dir = "/"
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "cannot open /dev/fuse as uid 65534") {
				t.Errorf("%s: exit %d, want 1 naming /dev/fuse and the uid\n%s", sh, code, out)
			}
		}
	})
}

// hashservPing speaks bitbake's hash equivalence protocol (OEHASHEQUIV 1.1,
// compat/hashserv-transcript.txt): handshake, then a ping.
func hashservPing(t *testing.T, sock string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("hash equivalence socket: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "OEHASHEQUIV 1.1\nneeds-headers: false\n\n{\"ping\": {}}\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("hash equivalence ping: %v", err)
	}
	return line
}

// ---- the unit's privileges, for real --------------------------------------

// TestSystemdUnitPrivileges mounts with exactly the unit's capability
// bounding set and NoNewPrivileges, lets an unprivileged user publish through
// it like bitbake, then kills the mount and checks that the unit's
// ExecStopPost clears the dead mount so that a restart works.
func TestSystemdUnitPrivileges(t *testing.T) {
	requireRootFUSE(t)
	bin := sstatefsBinary(t)
	u := parseUnit(t)
	caps := strings.Fields(u.get("Service", "CapabilityBoundingSet"))
	if len(caps) == 0 {
		t.Fatal("no CapabilityBoundingSet")
	}
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	s := newSandbox(t)
	// the build user (nobody here) owns the mountpoint: it may publish
	if err := os.MkdirAll(s.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(s.mnt, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	start := func() *exec.Cmd {
		t.Helper()
		argv := []string{"--bounding-set=" + bounding, "--inh-caps=-all"}
		if u.get("Service", "NoNewPrivileges") == "yes" {
			argv = append(argv, "--no-new-privs")
		}
		// the unit's ExecStart flags, on the sandbox's store and mountpoint
		exec0 := unitExecStart(t, u)
		argv = append(argv, bin, "mount", "--config", "/dev/null", "--store", "file://"+s.store, "--cache-dir", s.cache)
		for _, a := range exec0[2 : len(exec0)-1] {
			argv = append(argv, strings.ReplaceAll(a, "/run/sstatefs", s.dir))
		}
		argv = append(argv, s.mnt)
		cmd := exec.Command("setpriv", argv...)
		var log testutil.SyncBuffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// unmount and drain, as at a stop; kill only if that hangs
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Minute):
				cmd.Process.Kill()
				<-done
			}
		})
		// ready as the unit's ExecStartPost waits for it: the ready file
		// (written once the hash equivalence socket listens too)
		deadline := time.Now().Add(30 * time.Second)
		for !mounted(s.mnt) || !fileExists(filepath.Join(s.dir, "ready")) {
			if time.Now().After(deadline) {
				t.Fatalf("not mounted with the unit's privileges (%s):\n%s", bounding, log.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		return cmd
	}
	mount := start()

	// the hash equivalence socket of the unit: answers, and is the mount
	// owner's alone (any local user who can report can redirect a taskhash)
	if hs, ok := flagValue(unitExecStart(t, u), "hashserv"); ok {
		sock := strings.ReplaceAll(strings.TrimPrefix(hs, "unix://"), "/run/sstatefs", s.dir)
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatalf("hash equivalence socket: %v", err)
		}
		if fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("hash equivalence socket %s has mode %v: every local user may connect", sock, fi.Mode())
		}
		if reply := hashservPing(t, sock); !strings.Contains(reply, `"alive": true`) {
			t.Errorf("hash equivalence ping: %q", reply)
		}
	}

	key := testKey(3, "package_write_ipk")
	pub := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", nobody), fmt.Sprintf("--regid=%d", nobody), "--clear-groups",
		"sh", "-c", publishScript, "sh", key)
	pub.Env = cleanEnv("SSTATE_DIR=" + s.mnt)
	pub.Dir = "/"
	out, err := pub.CombinedOutput()
	if err != nil {
		t.Fatalf("publishing as nobody through a mount with %s: %v\n%s", bounding, err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("owner=%d", nobody)) {
		t.Errorf("files created through the mount do not belong to their creator (CAP_CHOWN?):\n%s", out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(s.store, key)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the published object was not uploaded")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// a crash leaves a dead mount; ExecStopPost clears it, the restart works
	mount.Process.Kill()
	mount.Wait()
	if _, err := os.Stat(s.mnt); !errors.Is(err, syscall.ENOTCONN) {
		t.Logf("after kill -9: stat %s: %v", s.mnt, err)
	}
	post := strings.Fields(strings.TrimLeft(u.get("Service", "ExecStopPost"), "-"))
	post[len(post)-1] = s.mnt
	if out, err := exec.Command(post[0], post[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("ExecStopPost %q: %v\n%s", post, err, out)
	}
	if mounted(s.mnt) {
		t.Fatal("ExecStopPost left the dead mount")
	}
	mount = start()
	if b, err := os.ReadFile(filepath.Join(s.mnt, key)); err != nil || string(b) != "payload of "+key {
		t.Errorf("after the restart: %q %v", b, err)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
