package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const nobody = 65534

// needRoot fails in CI and skips elsewhere when the test cannot switch
// users.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test runs commands as another user and needs root")
		}
		t.Skip("needs root")
	}
}

// publicCopy puts the binary and the config where another user can read
// them (the test's own directories are private).
func publicCopy(t *testing.T, w *world) (bin, config string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "s3replicad-public-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	bin, config = filepath.Join(dir, "s3replicad"), filepath.Join(dir, "config.yaml")
	raw, err := os.ReadFile(binary)
	must(t, err)
	must(t, os.WriteFile(bin, raw, 0o755))
	raw, err = os.ReadFile(w.configPath)
	must(t, err)
	must(t, os.WriteFile(config, raw, 0o644))
	return bin, config
}

// runAs runs a subcommand as uid and returns stdout, stderr, exit code.
func runAs(t *testing.T, uid int, bin, config string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, append(args[:1:1], append([]string{"-config", config}, args[1:]...)...)...)
	cmd.Env = append(cliEnv(), "HOME=/")
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

func httpDo(t *testing.T, method, url string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(`{"keys":[]}`))
	must(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// On a shared host, `listen` is read-only and the admin socket is the
// daemon's user's (and root's) alone: another local user can read the
// metrics and nothing else, and is told so rather than shown an empty
// state.
func TestAdminIsForTheDaemonsUserOnly(t *testing.T) {
	needRoot(t)
	t.Parallel()
	w := newWorld(t, worldOpts{})
	bin, config := publicCopy(t, w)
	d := w.start()
	base := "http://" + d.listen

	// listen serves read-only endpoints, and nothing that changes state or
	// profiles the daemon.
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/metrics", 200}, {"GET", "/healthz", 200}, {"GET", "/readyz", 200},
		{"POST", "/admin/retry", 404}, {"POST", "/retry", 404}, {"GET", "/admin/status", 404},
		{"GET", "/debug/pprof/", 404}, {"GET", "/debug/pprof/profile?seconds=1", 404},
		{"POST", "/metrics", 405}, {"DELETE", "/readyz", 405},
	} {
		if got := httpDo(t, c.method, base+c.path); got != c.want {
			t.Errorf("%s %s on listen: %d, want %d", c.method, c.path, got, c.want)
		}
	}

	stateDir := filepath.Join(w.dir, "state")
	sock := filepath.Join(stateDir, "admin.sock")
	fi, err := os.Lstat(sock)
	must(t, err)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket mode %v, want a socket 0600", fi.Mode())
	}
	if di, _ := os.Stat(stateDir); di.Mode().Perm() != 0o700 {
		t.Fatalf("state_dir mode %v, want 0700", di.Mode().Perm())
	}

	// Another user: every admin command fails, naming what it cannot open.
	for _, args := range [][]string{{"status"}, {"status", "-json"}, {"retry", "-all"}, {"backfill"}} {
		out, errOut, code := runAs(t, nobody, bin, config, args...)
		if code != 1 || !strings.Contains(errOut, sock) || !strings.Contains(errOut, "permission denied") {
			t.Errorf("%v as another user: exit %d, stderr %q, stdout %q; want exit 1 naming %s", args, code, errOut, out, sock)
		}
	}
	// Root, through the socket.
	out, errOut, code := runAs(t, 0, bin, config, "status", "-json")
	var st struct {
		DaemonRunning bool `json:"daemon_running"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.DaemonRunning {
		t.Fatalf("status as root: exit %d, %s %s", code, out, errOut)
	}

	d.stop()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("the admin socket outlived the daemon: %v", err)
	}
	// No daemon: the state file is as private as the socket was.
	for _, args := range [][]string{{"status"}, {"retry", "-all"}} {
		out, errOut, code := runAs(t, nobody, bin, config, args...)
		if code != 1 || !strings.Contains(errOut, stateDir+"/") || !strings.Contains(errOut, "permission denied") || strings.Contains(out, "pending") {
			t.Errorf("%v as another user, no daemon: exit %d, stderr %q, stdout %q; want exit 1 naming what it cannot open", args, code, errOut, out)
		}
	}

	// A socket left by a daemon that died is replaced at the next start,
	// and meanwhile the commands read the state file.
	ln, err := net.Listen("unix", sock)
	must(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if out, errOut, code := runAs(t, 0, bin, config, "status"); code != 0 || !strings.Contains(out, "not running") {
		t.Fatalf("status with a stale socket: exit %d: %s %s", code, out, errOut)
	}
	d = w.start()
	waitFor(t, 5*time.Second, "status through the new socket", func() bool {
		out, _, code := runAs(t, 0, bin, config, "status")
		return code == 0 && strings.Contains(out, "daemon:          running")
	})
	d.stop()
}
