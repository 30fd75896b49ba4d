package testenv

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
)

// Rclone returns an `rclone` command whose remotes src: and dst: are the
// environment's source and destination servers (provider Other,
// path-style), trusting its CA when it has one; args come first, e.g.
// "copy", "src:bucket", "dst:bucket", flags...
func (e *Env) Rclone(ctx context.Context, configFile string, args ...string) *exec.Cmd {
	args = append(args, "--config", configFile, "--stats", "0")
	if e.TLS != nil {
		args = append(args, "--ca-cert", e.TLS.CAFile)
	}
	cmd := exec.CommandContext(ctx, "rclone", args...)
	// A CA bundle from the environment makes rclone 1.60 refuse to start;
	// the CA it needs is given with --ca-cert.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_CA_BUNDLE=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for _, r := range []struct{ name, url string }{{"SRC", e.Source}, {"DST", e.Destination}} {
		p := "RCLONE_CONFIG_" + r.name + "_"
		cmd.Env = append(cmd.Env, p+"TYPE=s3", p+"PROVIDER=Other", p+"ENDPOINT="+r.url, p+"FORCE_PATH_STYLE=true",
			p+"ACCESS_KEY_ID="+AccessKey, p+"SECRET_ACCESS_KEY="+SecretKey, p+"REGION="+Region)
	}
	return cmd
}

// FetchProfile saves one of a daemon's profiles (pprof's name and query:
// "profile?seconds=10", "allocs") from its admin socket to path.
func FetchProfile(socket, name, path string) error {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	return SaveProfile(hc, "http://s3replicad/debug/pprof/"+name, path)
}

// SaveProfile saves the profile that url answers (through hc) to path.
func SaveProfile(hc *http.Client, url, path string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}
