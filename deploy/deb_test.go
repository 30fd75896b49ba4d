// Package deploy holds the deployment files (systemd unit, example
// configuration, Debian packaging, alerts, dashboard) and the tests that
// install them.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// TestDebianPackage builds the .deb with `make deb`, installs it with
// dpkg on this machine, checks its files, conffiles, modes and that it
// starts nothing, then removes it (state and configuration stay) and purges
// it (both go).
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 || exec.Command("dpkg", "--version").Run() != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("installing the package needs root and dpkg")
		}
		t.Skip("needs root and dpkg")
	}
	if exec.Command("dpkg-query", "-W", "s3replicad").Run() == nil || exists("/var/lib/s3replicad") || exists("/etc/s3replicad") {
		t.Fatal("s3replicad is already installed on this machine, or its state or configuration is here: this test would remove them")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("make", "-s", "deb")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(root, "build", "s3replicad_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one package in build/, found %v", debs)
	}
	t.Cleanup(func() { _ = exec.Command("dpkg", "--purge", "s3replicad").Run() })

	out := run(t, "dpkg", "-i", debs[0])
	if !strings.Contains(out, "not started") {
		t.Errorf("the install does not say what to do next:\n%s", out)
	}
	for path, want := range map[string]os.FileMode{
		"/usr/bin/s3replicad":                           0o755,
		"/lib/systemd/system/s3replicad.service":        0o644,
		"/etc/s3replicad/config.yaml":                   0o644,
		"/etc/s3replicad/env":                           0o600,
		"/usr/share/doc/s3replicad/README.md":           0o644,
		"/usr/share/doc/s3replicad/examples/alerts.yml": 0o644,
	} {
		if got := mode(t, path); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	conffiles := run(t, "dpkg-query", "-W", "-f=${Conffiles}", "s3replicad")
	for _, f := range []string{"/etc/s3replicad/config.yaml", "/etc/s3replicad/env"} {
		if !strings.Contains(conffiles, f) {
			t.Errorf("%s is not a conffile: %q", f, conffiles)
		}
	}
	unit, _ := os.ReadFile("/lib/systemd/system/s3replicad.service")
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/s3replicad run -config /etc/s3replicad/config.yaml") {
		t.Errorf("the packaged unit does not run /usr/bin/s3replicad:\n%s", unit)
	}
	if v := run(t, "/usr/bin/s3replicad", "version"); !strings.HasPrefix(v, "s3replicad ") {
		t.Errorf("s3replicad version: %q", v)
	}
	if exists("/etc/systemd/system/multi-user.target.wants/s3replicad.service") {
		t.Error("the package enabled the service before its configuration was edited")
	}

	// The operator edits the configuration; the service keeps a state.
	if err := os.WriteFile("/etc/s3replicad/config.yaml", []byte("# edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/var/lib/private/s3replicad", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/var/lib/private/s3replicad/state.db", []byte("state"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("private/s3replicad", "/var/lib/s3replicad"); err != nil {
		t.Fatal(err)
	}

	run(t, "dpkg", "-r", "s3replicad")
	if exists("/usr/bin/s3replicad") || exists("/lib/systemd/system/s3replicad.service") {
		t.Error("remove left the binary or the unit")
	}
	if b, err := os.ReadFile("/etc/s3replicad/config.yaml"); err != nil || string(b) != "# edited\n" {
		t.Errorf("remove lost the edited configuration: %q %v", b, err)
	}
	if !exists("/var/lib/s3replicad/state.db") {
		t.Error("remove deleted the state")
	}

	run(t, "dpkg", "--purge", "s3replicad")
	for _, p := range []string{"/etc/s3replicad", "/var/lib/s3replicad", "/var/lib/private/s3replicad"} {
		if exists(p) {
			t.Errorf("purge left %s", p)
		}
	}
}
