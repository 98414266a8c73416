package natstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ComponentPackage is the component's main package.
const ComponentPackage = "github.com/dapr-nats/jetstream-pubsub"

// NATSServerPackage is nats-server at the version go.mod requires.
const NATSServerPackage = "github.com/nats-io/nats-server/v2"

// buildTimeout bounds one go build; a cold module cache takes a while.
const buildTimeout = 5 * time.Minute

type build struct {
	once sync.Once
	bin  string
	err  error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}

	binDirOnce sync.Once
	binDir     string
	binDirErr  error
)

// BuildBinary builds pkg (a package path; "." is the component) with go build
// from the module root, once per process, and returns the binary's path.
// Concurrent callers of the same package wait for the one build.
func BuildBinary(pkg string) (string, error) {
	if pkg == "." {
		pkg = ComponentPackage
	}
	buildsMu.Lock()
	b, ok := builds[pkg]
	if !ok {
		b = &build{}
		builds[pkg] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() { b.bin, b.err = goBuild(pkg) })
	return b.bin, b.err
}

// MustBuild is BuildBinary for a test: it fails t if the build fails.
func MustBuild(t testing.TB, pkg string) string {
	t.Helper()
	bin, err := BuildBinary(pkg)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// RemoveBuilds deletes the built binaries, for a program or TestMain that
// does not leave them to go test's work directory.
func RemoveBuilds() {
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
}

func goBuild(pkg string) (string, error) {
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, binaryName(pkg))
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build -o %s %s: %v\n%s", bin, pkg, err, out.String())
	}
	return bin, nil
}

// binaryName names the binary after its package, without a major version
// suffix: nats-server, not v2; the component keeps its released name.
func binaryName(pkg string) string {
	if pkg == ComponentPackage {
		return "dapr-nats-jetstream"
	}
	name := path.Base(pkg)
	if len(name) > 1 && name[0] == 'v' && strings.Trim(name[1:], "0123456789") == "" {
		name = path.Base(path.Dir(pkg))
	}
	return name
}

// buildDir is where binaries go: next to the test binary when go test runs
// it from its work directory (which go test removes afterwards), else a
// temporary directory (see RemoveBuilds).
func buildDir() (string, error) {
	binDirOnce.Do(func() {
		if exe, err := os.Executable(); err == nil && strings.Contains(exe, "go-build") {
			if binDir, binDirErr = os.MkdirTemp(filepath.Dir(exe), "natstest-bin"); binDirErr == nil {
				return
			}
		}
		binDir, binDirErr = os.MkdirTemp("", "natstest-bin")
	})
	return binDir, binDirErr
}

var (
	rootOnce sync.Once
	root     string
	rootErr  error
)

// ModuleRoot is the directory of the module's go.mod.
func ModuleRoot() (string, error) {
	rootOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			rootErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		mod := strings.TrimSpace(string(out))
		if mod == "" || mod == os.DevNull {
			rootErr = errors.New("not inside the module (go env GOMOD is empty)")
			return
		}
		root = filepath.Dir(mod)
	})
	return root, rootErr
}
