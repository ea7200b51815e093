package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/sstatefs/sstatefs/sstate"
)

// realNames is compat/core-image-minimal-sstate-names.txt: the 2,897 object
// paths a core-image-minimal build wants, copied here so the benchmark
// needs nothing outside the repository.
//
//go:embed names/core-image-minimal-sstate-names.txt
var realNames string

// Object is one wanted object of the synthetic store.
type Object struct {
	Key     string // path below SSTATE_DIR, and the key in the bucket
	PN      string
	Task    string
	Present bool // in the store; a third of the wanted objects are not
	Size    int64
	CRC     uint32 // CRC-32C of the content (filled by Materialize)
	// Siginfo is the size of Key+".siginfo", which every present object
	// has (no object has a .sig: signing is off, as by default).
	Siginfo int64
	SigCRC  uint32
}

// sizeClass is how big a task's objects are.
type sizeClass int

const (
	classMeta  sizeClass = iota // reports, licenses, SPDX, QA: a few KB
	classSmall                  // packagedata: tens to hundreds of KB
	classBulk                   // sysroots, packages, work dirs: a long tail up to hundreds of MB
)

func (c sizeClass) String() string {
	return [...]string{"meta", "small", "bulk"}[c]
}

// classOf is the size rule of a task.
func classOf(task string) sizeClass {
	switch {
	case task == "populate_sysroot", task == "package", strings.HasPrefix(task, "package_write_"),
		task == "shared_workdir", task == "gcc_stash_builddir", task == "deploy",
		task == "image_complete", task == "stash_locale":
		return classBulk
	case task == "packagedata":
		return classSmall
	}
	return classMeta
}

// Size ranges (log-uniform) of the classes that do not scale with --size.
const (
	metaMin, metaMax       = 128, 32 << 10
	smallMin, smallMax     = 4 << 10, 512 << 10
	siginfoMin, siginfoMax = 1 << 10, 24 << 10
	bulkMin                = 4 << 10
)

// bulkFactor scales a recipe's weight by task: a package is bigger than its
// ipk, which is bigger than its sysroot part.
func bulkFactor(task string) float64 {
	switch {
	case task == "package":
		return 1
	case strings.HasPrefix(task, "package_write_"):
		return 0.7
	case task == "populate_sysroot":
		return 0.5
	case task == "shared_workdir":
		return 3
	case task == "gcc_stash_builddir":
		return 2
	}
	return 1
}

// heavyRecipes are the recipes whose objects dominate a real
// core-image-minimal sstate cache (compilers, the kernel, the C library,
// LLVM and Rust, QEMU, the image itself), with how much heavier they are
// than a typical recipe.
var heavyRecipes = map[string]float64{
	"linux-yocto": 40, "gcc-cross-x86_64": 30, "gcc": 20, "glibc": 20, "glibc-locale": 20,
	"llvm-native": 30, "clang-native": 30, "rust-native": 30, "libstd-rs": 10,
	"qemu-system-native": 15, "core-image-minimal": 15,
	"binutils": 5, "binutils-cross-x86_64": 5, "binutils-native": 5, "python3": 5, "python3-native": 5,
	"perl": 5, "perl-native": 5, "systemd": 5, "mesa-native": 5, "cmake-native": 5, "git-native": 5,
	"openssl": 3, "openssl-native": 3, "util-linux": 3, "qemu-native": 3, "cargo-native": 5,
	"gettext-native": 3, "coreutils": 3, "elfutils": 3, "gcc-runtime": 5, "libgcc-initial": 3,
}

// maxObjectSize is the largest a bulk object may get for a store of total
// bytes: "hundreds of MB" for the default GiB, less for small stores.
func maxObjectSize(total int64) int64 {
	return min(max(total/4, 1<<20), 512<<20)
}

// Spec describes a synthetic store.
type Spec struct {
	Names  []string // wanted object paths
	Total  int64    // bytes of the present objects and their .siginfo
	Seed   uint64
	Absent float64 // fraction of wanted objects missing from the store
}

// RealNames returns the embedded name list.
func RealNames() []string { return parseNames(realNames) }

// ReadNames reads a name list, one object path a line.
func ReadNames(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	names := parseNames(string(b))
	if len(names) == 0 {
		return nil, fmt.Errorf("%s: no object names", path)
	}
	for _, n := range names {
		if _, err := sstate.Parse(n); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return names, nil
}

func parseNames(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// Sample returns k of names chosen at random (all if k >= len), in their
// original order, so a quick run keeps the real mix of tasks.
func Sample(names []string, k int, seed uint64) []string {
	if k <= 0 || k >= len(names) {
		return slices.Clone(names)
	}
	r := rand.New(rand.NewPCG(seed, 0x5a3))
	idx := r.Perm(len(names))[:k]
	slices.Sort(idx)
	out := make([]string, k)
	for i, j := range idx {
		out[i] = names[j]
	}
	return out
}

// logUniform draws from [lo, hi] with a uniform logarithm: as many objects
// of 100 B–1 KB as of 10–100 KB.
func logUniform(r *rand.Rand, lo, hi int64) int64 {
	l, h := math.Log(float64(lo)), math.Log(float64(hi))
	return int64(math.Exp(l + r.Float64()*(h-l)))
}

// hashSeed turns a string into a seed, so that a recipe gets the same
// weight whatever else is in the store.
func hashSeed(seed uint64, s string) [32]byte {
	h := sha256.New()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h.Write(b[:])
	h.Write([]byte(s))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Plan decides which wanted objects are present and how big each is: meta
// tasks a few KB, packagedata up to 512 KiB, every .siginfo 1–24 KiB, and
// the bulk tasks share the rest of Total in a heavy-tailed way (a weight
// per recipe, log-normal and larger for the known heavy recipes, times a
// factor per task), each capped at
// maxObjectSize(Total). If Total is smaller than the fixed part, the store
// gets the fixed part and every bulk object bulkMin.
func Plan(spec Spec) ([]Object, error) {
	r := rand.New(rand.NewPCG(spec.Seed, 0xb0b))
	objs := make([]Object, len(spec.Names))
	seen := make(map[string]bool, len(spec.Names))
	for i, key := range spec.Names {
		n, err := sstate.Parse(key)
		if err != nil {
			return nil, err
		}
		if n.Companion != "" {
			return nil, fmt.Errorf("%q: want an object, not a %s companion", key, n.Companion)
		}
		if seen[key] {
			return nil, fmt.Errorf("%q: listed twice", key)
		}
		seen[key] = true
		objs[i] = Object{Key: key, PN: n.PN, Task: n.Task, Present: true}
	}
	absent := int(math.Round(float64(len(objs)) * spec.Absent))
	for _, i := range r.Perm(len(objs))[:absent] {
		objs[i].Present = false
	}

	var fixed int64
	var bulk []int
	for i := range objs {
		o := &objs[i]
		if !o.Present {
			continue
		}
		o.Siginfo = logUniform(r, siginfoMin, siginfoMax)
		fixed += o.Siginfo
		switch classOf(o.Task) {
		case classMeta:
			o.Size = logUniform(r, metaMin, metaMax)
			fixed += o.Size
		case classSmall:
			o.Size = logUniform(r, smallMin, smallMax)
			fixed += o.Size
		case classBulk:
			bulk = append(bulk, i)
		}
	}
	weights := make([]float64, len(bulk))
	recipe := map[string]float64{}
	for j, i := range bulk {
		o := &objs[i]
		w, ok := recipe[o.PN]
		if !ok {
			rr := rand.New(rand.NewChaCha8(hashSeed(spec.Seed, o.PN)))
			w = math.Exp(1.2*rr.NormFloat64()) * max(heavyRecipes[o.PN], 1)
			recipe[o.PN] = w
		}
		weights[j] = w * bulkFactor(o.Task) * math.Exp(0.3*r.NormFloat64())
	}
	sizes := fillBudget(weights, float64(spec.Total-fixed), float64(maxObjectSize(spec.Total)), bulkMin)
	for j, i := range bulk {
		objs[i].Size = sizes[j]
	}
	return objs, nil
}

// fillBudget shares budget among the weights proportionally, with no share
// above ceil and none below floor: shares that would exceed ceil are set
// to it and the rest is shared again among the others.
func fillBudget(weights []float64, budget, ceil float64, floor int64) []int64 {
	out := make([]int64, len(weights))
	free := make([]int, len(weights))
	for i := range free {
		free[i] = i
	}
	for len(free) > 0 {
		var sum float64
		for _, i := range free {
			sum += weights[i]
		}
		var keep []int
		for _, i := range free {
			if s := budget * weights[i] / sum; s > ceil {
				out[i] = int64(ceil)
			} else {
				keep = append(keep, i)
			}
		}
		if len(keep) == len(free) {
			for _, i := range free {
				out[i] = max(int64(budget*weights[i]/sum), floor)
			}
			break
		}
		budget -= ceil * float64(len(free)-len(keep))
		if budget < 0 {
			budget = 0
		}
		free = keep
	}
	return out
}

// Present returns the objects that are in the store.
func Present(objs []Object) []Object {
	var out []Object
	for _, o := range objs {
		if o.Present {
			out = append(out, o)
		}
	}
	return out
}

// StoreBytes is what the present objects and their .siginfo add up to.
func StoreBytes(objs []Object) int64 {
	var n int64
	for _, o := range objs {
		if o.Present {
			n += o.Size + o.Siginfo
		}
	}
	return n
}

// Content returns the bytes of an object: random (like zstd output, so
// nothing on the way can compress them), different for every key and the
// same every time for a key.
func Content(seed uint64, key string, size int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(hashSeed(seed, key)), size)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Materialize writes the present objects and their .siginfo below dir (the
// local disk copy the store is uploaded from and the local-disk reference
// reads) and fills in their CRCs.
func Materialize(dir string, objs []Object, seed uint64) error {
	var g errgroup.Group
	g.SetLimit(4)
	for i := range objs {
		o := &objs[i]
		if !o.Present {
			continue
		}
		g.Go(func() error {
			var err error
			if o.CRC, err = writeContent(filepath.Join(dir, o.Key), seed, o.Key, o.Size); err != nil {
				return err
			}
			o.SigCRC, err = writeContent(filepath.Join(dir, o.Key+".siginfo"), seed, o.Key+".siginfo", o.Siginfo)
			return err
		})
	}
	return g.Wait()
}

func writeContent(path string, seed uint64, key string, size int64) (uint32, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, err
	}
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	h := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if _, err := io.Copy(bw, Content(seed, key, size)); err != nil {
		f.Close()
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return 0, err
	}
	return h.Sum32(), f.Close()
}

// ContentBytes is Content in memory, with its CRC.
func ContentBytes(seed uint64, key string, size int64) ([]byte, uint32) {
	var b bytes.Buffer
	b.Grow(int(size))
	io.Copy(&b, Content(seed, key, size))
	return b.Bytes(), crc32.Checksum(b.Bytes(), castagnoli)
}

// Rehash returns key with its hash (and the hash directories) replaced by
// one derived from salt: a new object of the same recipe and task.
func Rehash(key, salt string) string {
	n, err := sstate.Parse(key)
	if err != nil {
		panic(err) // keys come from Plan, which parsed them
	}
	sum := sha256.Sum256([]byte(salt + "\x00" + key))
	h := hex.EncodeToString(sum[:])[:len(n.Hash)]
	dir, base := filepath.Split(key)
	parts := strings.Split(strings.TrimSuffix(dir, "/"), "/")
	parts[len(parts)-2], parts[len(parts)-1] = h[0:2], h[2:4]
	return strings.Join(parts, "/") + "/" + strings.Replace(base, n.Hash, h, 1)
}
