package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/internal/testenv"
)

// unitDirectives reads a systemd unit's [Service] directives.
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	d := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			d[k] = append(d[k], v)
		}
	}
	return d
}

// environmentFile reads NAME=value lines as systemd's EnvironmentFile=.
func environmentFile(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	must(t, err)
	var env []string
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		env = append(env, line)
	}
	return env
}

// The service starts as installed: `make install` into a DESTDIR, the
// operator's edits (the config names its secrets as variables, the
// environment file holds them), then what systemd would do with the unit:
// a dynamic user that is neither root nor the file's owner, its state
// directory, the environment file read as root. As that user, check-config
// passes and `run` replicates; root's `s3replicad status`, without the
// service's environment, talks to it over the admin socket.
func TestInstalledServiceStarts(t *testing.T) {
	needRoot(t)
	t.Parallel()
	w := newWorld(t, worldOpts{})
	root, err := testenv.Root()
	must(t, err)
	destdir, err := os.MkdirTemp("", "s3replicad-install-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(destdir) })
	must(t, os.Chmod(destdir, 0o755))
	install := exec.Command("make", "-s", "install", "DESTDIR="+destdir, "PREFIX=/usr")
	install.Dir = root
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	bin := filepath.Join(destdir, "usr/bin/s3replicad")
	unit := filepath.Join(destdir, "etc/systemd/system/s3replicad.service")
	config := filepath.Join(destdir, "etc/s3replicad/config.yaml")
	envFile := filepath.Join(destdir, "etc/s3replicad/env")
	for path, mode := range map[string]os.FileMode{bin: 0o755, unit: 0o644, config: 0o644, envFile: 0o600} {
		fi, err := os.Stat(path)
		must(t, err)
		if fi.Mode().Perm() != mode {
			t.Errorf("%s installed %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	d := unitDirectives(t, unit)
	if got := d["ExecStart"]; len(got) != 1 || got[0] != "/usr/bin/s3replicad run -config /etc/s3replicad/config.yaml" {
		t.Fatalf("ExecStart %q", got)
	}
	if d["DynamicUser"][0] != "yes" || d["StateDirectory"][0] != "s3replicad" || d["StateDirectoryMode"][0] != "0700" ||
		!strings.HasSuffix(d["EnvironmentFile"][0], "/etc/s3replicad/env") || len(d["ExecStartPre"]) != 0 {
		t.Fatalf("unit: %v", d)
	}

	// The operator's edits: endpoints and buckets in the config, which names
	// every secret as a variable; the values in the environment file.
	raw, err := os.ReadFile(config)
	must(t, err)
	cfg := string(raw)
	stateDir := filepath.Join(destdir, "var/lib/s3replicad")
	for _, r := range [][2]string{
		{"state_dir: /var/lib/s3replicad", "state_dir: " + stateDir},
		{"listen: 127.0.0.1:9464", "listen: " + w.listen},
		{`endpoint: ""              # custom SQS endpoint; empty = AWS`, "endpoint: ${SQS_ENDPOINT}"},
		{`access_key_id: ""         # empty = AWS default credential chain`, "access_key_id: ${QUEUE_KEY}"},
		{`endpoint: ""              # S3-compatible source; empty = AWS`, "endpoint: ${SOURCE_ENDPOINT}"},
		{"path_style: false", "path_style: true"},
		{`access_key_id: ""         # empty = env, profile or instance role`, "access_key_id: ${SOURCE_KEY}"},
		{"wait_time: 20s", "wait_time: 1s"},
	} {
		if !strings.Contains(cfg, r[0]) {
			t.Fatalf("the example config has no %q", r[0])
		}
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	cfg = strings.Replace(cfg, `secret_access_key: ""`, "secret_access_key: ${QUEUE_SECRET}", 1)
	cfg = strings.Replace(cfg, `secret_access_key: ""`, "secret_access_key: ${SOURCE_SECRET}", 1)
	must(t, os.WriteFile(config, []byte(cfg), 0o644))
	secrets := fmt.Sprintf(`# edited by the operator
S3REPLICAD_QUEUE_URL=%s
SQS_ENDPOINT=%s
QUEUE_KEY=%s
QUEUE_SECRET=%s
SOURCE_ENDPOINT=%s
SOURCE_KEY=%s
SOURCE_SECRET=%s
SOURCE_BUCKET=%s
DR_ENDPOINT=%s
DR_BUCKET=%s
DR_ACCESS_KEY=%s
DR_SECRET_KEY=%s
`, w.queueURL, env.SQS, testenv.AccessKey, testenv.SecretKey, env.Source, testenv.AccessKey, testenv.SecretKey,
		w.srcBucket, env.Destination, w.dstBucket, testenv.AccessKey, testenv.SecretKey)
	must(t, os.WriteFile(envFile, []byte(secrets), 0o600))
	if strings.Contains(cfg, testenv.SecretKey) {
		t.Fatal("the config holds a secret")
	}

	// What systemd does: a dynamic user, its state directory, the
	// environment file read as root.
	const dynamicUID = 61873
	must(t, os.MkdirAll(filepath.Dir(stateDir), 0o755))
	must(t, os.Mkdir(stateDir, 0o700))
	must(t, os.Chown(stateDir, dynamicUID, dynamicUID))
	serviceEnv := append([]string{"PATH=/usr/bin:/bin", "HOME=/"}, environmentFile(t, envFile)...)
	asService := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, args...)
		cmd.Env = serviceEnv
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: dynamicUID, Gid: dynamicUID}}
		return cmd
	}
	if out, err := asService("check-config", "-config", "/dev/stdin").CombinedOutput(); err == nil {
		t.Fatalf("check-config of an empty file passed: %s", out)
	}
	check := asService("check-config", "-config", config)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("check-config as the service's user: %v\n%s", err, out)
	}
	// The operator's `sudo s3replicad check-config`: root, without the
	// service's environment, reads the environment file beside the config.
	rootCheck := exec.Command(bin, "check-config", "-config", config)
	rootCheck.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	if out, err := rootCheck.CombinedOutput(); err != nil {
		t.Fatalf("check-config as root without the service's environment: %v\n%s", err, out)
	}
	run := asService("run", "-config", config)
	var logs bytes.Buffer
	run.Stdout, run.Stderr = &logs, &logs
	must(t, run.Start())
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	t.Cleanup(func() {
		_ = run.Process.Kill()
		<-done
	})
	waitFor(t, 20*time.Second, "the service ready", func() bool {
		resp, err := http.Get("http://" + w.listen + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	ev := w.put("installed.txt", []byte("replicated by the installed service"))
	w.send(testenv.S3Body(ev))
	w.waitReplicated("installed.txt", ev.VersionID, 20*time.Second)

	// Root, without the service's environment, reaches it through the
	// socket; the state it keeps belongs to the service's user.
	status := exec.Command(bin, "status", "-json", "-config", config)
	status.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := status.Output()
	var st struct {
		DaemonRunning bool             `json:"daemon_running"`
		Counts        map[string]int64 `json:"counts"`
	}
	if err != nil || json.Unmarshal(out, &st) != nil || !st.DaemonRunning || st.Counts["completed"] != 1 {
		t.Fatalf("status as root: %v %s", err, out)
	}
	for _, name := range []string{"state.db", "admin.sock"} {
		fi, err := os.Stat(filepath.Join(stateDir, name))
		must(t, err)
		if fi.Sys().(*syscall.Stat_t).Uid != dynamicUID || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: owner %d mode %v, want the service's user and 0600", name, fi.Sys().(*syscall.Stat_t).Uid, fi.Mode().Perm())
		}
	}
	must(t, run.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the service exited with %v on SIGTERM\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the service did not stop on SIGTERM")
	}
	done <- nil // for the cleanup
}
