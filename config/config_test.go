package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

const baseConfig = `state_dir: /tmp/s3r
queue:
  url: https://sqs.us-east-1.amazonaws.com/123456789012/s3-events
destinations:
  - name: dr
    endpoint: https://s3.example.net:9000
    access_key_id: ${AK}
    secret_access_key: ${SK}
rules:
  - id: all
    source_bucket: src
    destination: dr
    destination_bucket: dst
`

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

var goodEnv = env(map[string]string{"AK": "AKID", "SK": "s3cr3t"})

func TestConfigDefaultsAndExpansion(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(baseConfig), goodEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9464" || cfg.ShutdownTimeout.D() != 30*time.Second || cfg.Queue.WaitTime.D() != 20*time.Second ||
		cfg.Transfer.Workers != 32 || cfg.Transfer.PartSize != 16<<20 || cfg.Transfer.MultipartThreshold != 32<<20 ||
		cfg.Transfer.PartConcurrency != 4 || !*cfg.Rules[0].Enabled {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
	d := cfg.Destinations[0]
	if cfg.Transfer.BufferMemory != 4*16<<20 || d.Integrity != "crc32c" || d.ServerSideCopy != "auto" || d.BandwidthLimit != 0 {
		t.Fatalf("transfer defaults not applied: buffers %d, integrity %q, server-side copy %q, bandwidth %d",
			cfg.Transfer.BufferMemory, d.Integrity, d.ServerSideCopy, d.BandwidthLimit)
	}
	if cfg.ServerSideCopy()["dr"] {
		t.Error("server-side copy chosen for a destination on another endpoint than the source")
	}
	if d.AccessKeyID != "AKID" || d.SecretAccessKey.Reveal() != "s3cr3t" {
		t.Fatalf("variables not expanded: %+v", d)
	}
	if s := d.SecretAccessKey.String(); strings.Contains(s, "s3cr3t") {
		t.Fatalf("secret prints as %q", s)
	}
}

func TestConfigErrorsNameKeyAndLine(t *testing.T) {
	cases := []struct {
		name, edit, want string
	}{
		{"unknown top-level key", "stat_dir: x\n", `line 14: unknown key "stat_dir" at the top level`},
		{"unknown nested key", strings.Replace(baseConfig, "  - id: all\n", "  - id: all\n    prefix: x\n", 1), `line 11: unknown key "prefix" in rules[0]`},
		{"bad duration", "shutdown_timeout: soon\n", `line 14: shutdown_timeout: "soon" is not a duration`},
		{"bad size", "transfer: {part_size: 16 parsecs}\n", `unknown unit "parsecs"`},
		{"small part", "transfer: {part_size: 1MiB}\n", "transfer.part_size: must be between 5MiB and 5GiB"},
		{"unknown destination", strings.Replace(baseConfig, "destination: dr", "destination: drr", 1), `line 12: rules[0].destination: "drr" is not the name of a destination`},
		{"bad log format", "log: {format: xml}\n", `log.format: "xml" is not text or json`},
		{"wrong type", "transfer: {workers: many}\n", "line 14: transfer.workers: cannot unmarshal !!str `many` into int"},
		{"unset variable", strings.Replace(baseConfig, "${SK}", "${NOPE}", 1), "line 8: destinations[0].secret_access_key: environment variable NOPE is not set"},
		{"bad integrity", strings.Replace(baseConfig, "    access_key_id: ${AK}\n", "    access_key_id: ${AK}\n    integrity: sha1\n", 1), `line 8: destinations[0].integrity: "sha1" is not crc32c or md5`},
		{"bad server-side copy", strings.Replace(baseConfig, "    access_key_id: ${AK}\n", "    access_key_id: ${AK}\n    server_side_copy: yes\n", 1), `line 8: destinations[0].server_side_copy: "yes" is not auto or off`},
		{"bad bandwidth", strings.Replace(baseConfig, "    access_key_id: ${AK}\n", "    access_key_id: ${AK}\n    bandwidth_limit: fast\n", 1), `line 8: destinations[0].bandwidth_limit: "fast" is not a size`},
		{"tiny bandwidth", strings.Replace(baseConfig, "    access_key_id: ${AK}\n", "    access_key_id: ${AK}\n    bandwidth_limit: 1KiB/s\n", 1), `line 8: destinations[0].bandwidth_limit: must be 0 (unlimited) or at least 64KiB/s`},
		{"buffers below a part", "transfer: {buffer_memory: 8MiB}\n", "transfer.buffer_memory: must be at least transfer.part_size (16.0 MiB)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := c.edit
			if !strings.HasPrefix(raw, "state_dir") {
				raw = baseConfig + raw
			}
			_, err := Parse("c.yaml", []byte(raw), goodEnv)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a ConfigError", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Fatal("error reveals a secret")
			}
		})
	}
}

func TestSamePriorityConflict(t *testing.T) {
	raw := baseConfig + `  - id: second
    source_bucket: src
    destination: dr
    destination_bucket: dst
`
	_, err := Parse("c.yaml", []byte(raw), goodEnv)
	if err == nil || !strings.Contains(err.Error(), "same priority") {
		t.Fatalf("err = %v", err)
	}
}

// 0s is a wait time (short polling), not "use the default".
func TestZeroValuesThatMeanSomething(t *testing.T) {
	conf := strings.Replace(baseConfig, "  url: https://sqs", "  wait_time: 0s\n  url: https://sqs", 1)
	cfg, err := Parse("c.yaml", []byte(conf), goodEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Queue.WaitTime != 0 {
		t.Fatalf("wait_time: 0s became %v", cfg.Queue.WaitTime.D())
	}
	// A zero threshold is refused rather than quietly replaced.
	_, err = Parse("c.yaml", []byte(baseConfig+"transfer: {multipart_threshold: 0}\n"), goodEnv)
	if err == nil || !strings.Contains(err.Error(), "transfer.multipart_threshold: must be between 1 byte and 5GiB") {
		t.Fatalf("multipart_threshold 0: %v", err)
	}
}

// A rule that writes into its own source bucket, under keys it selects,
// would replicate its replicas forever.
func TestRuleThatFeedsItselfIsRefused(t *testing.T) {
	same := strings.Replace(baseConfig, "destination_bucket: dst", "destination_bucket: src", 1) +
		"source: {endpoint: https://s3.example.net:9000}\n"
	_, err := Parse("c.yaml", []byte(same), goodEnv)
	if err == nil || !strings.Contains(err.Error(), `rules[0].destination_bucket: "src" is the source bucket on the same endpoint`) {
		t.Fatalf("self-feeding rule: %v", err)
	}
	apart := strings.Replace(same, "    destination: dr\n", "    destination: dr\n    destination_prefix: copies/\n    filter: {prefix: data/}\n", 1)
	if _, err := Parse("c.yaml", []byte(apart), goodEnv); err != nil {
		t.Fatalf("copies/ from data/ in the same bucket: %v", err)
	}
	other := strings.Replace(same, "source: {endpoint: https://s3.example.net:9000}", "source: {endpoint: https://other.example.net}", 1)
	if _, err := Parse("c.yaml", []byte(other), goodEnv); err != nil {
		t.Fatalf("same bucket name on another endpoint: %v", err)
	}
}

func TestBandwidthAndServerSideCopyChoice(t *testing.T) {
	conf := strings.Replace(baseConfig, "    access_key_id: ${AK}\n", "    access_key_id: ${AK}\n    bandwidth_limit: 50MiB/s\n", 1) +
		"source: {endpoint: 'https://S3.example.net:9000/'}\n"
	cfg, err := Parse("c.yaml", []byte(conf), goodEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Destinations[0].BandwidthLimit != 50<<20 {
		t.Errorf("bandwidth_limit 50MiB/s parsed as %d", cfg.Destinations[0].BandwidthLimit)
	}
	if !cfg.ServerSideCopy()["dr"] {
		t.Error("server-side copy not chosen for a destination on the source's endpoint")
	}
	cfg.Destinations[0].ServerSideCopy = "off"
	if cfg.ServerSideCopy()["dr"] {
		t.Error("server_side_copy: off not honoured")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"16MiB": 16 << 20, "1GiB": 1 << 30, "512": 512, "5 MiB": 5 << 20, "1MB": 1000000, "64KiB": 64 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "10 potatoes"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

// status and retry need only state_dir: they work as root without the
// service's environment, whose secrets the rest of the file names; run and
// check-config still require every variable.
func TestStateCommandsNeedOnlyStateDir(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/config.yaml"
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(baseConfig + "transfer:\n  stall_timeout: 5s\n")
	cfg, err := LoadState(path)
	if err != nil || cfg.StateDir != "/tmp/s3r" {
		t.Fatalf("state config without the secrets' variables: %v %+v", err, cfg)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "environment variable AK is not set") {
		t.Fatalf("the full config loaded without its variables: %v", err)
	}
	write(strings.Replace(baseConfig, "state_dir: /tmp/s3r", "state_dir: ${S3R_TEST_NOT_SET}/s3r", 1))
	if _, err := LoadState(path); err == nil || !strings.Contains(err.Error(), "line 1: state_dir: environment variable S3R_TEST_NOT_SET is not set") {
		t.Fatalf("state_dir with an unset variable: %v", err)
	}
	write(baseConfig + "bogus: 1\n")
	if _, err := LoadState(path); err == nil || !strings.Contains(err.Error(), `unknown key "bogus"`) {
		t.Fatalf("unknown key: %v", err)
	}
}

// Commands run by hand see the variables the service gets from its
// environment file: the file `env` beside the configuration, or the one
// $S3REPLICAD_ENV_FILE names, for variables the environment lacks.
func TestEnvironmentFileBesideTheConfig(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/config.yaml"
	if err := os.WriteFile(path, []byte(baseConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "environment variable AK is not set") {
		t.Fatalf("without an environment file: %v", err)
	}
	env := "# secrets\nAK=from-file\n; comment\nSK=\"quoted secret\"\n\n"
	if err := os.WriteFile(dir+"/env", []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Destinations[0]; d.AccessKeyID != "from-file" || d.SecretAccessKey.Reveal() != "quoted secret" {
		t.Fatalf("from the environment file: %q %q", d.AccessKeyID, d.SecretAccessKey.Reveal())
	}
	t.Setenv("AK", "from-environment")
	if cfg, _ := Load(path); cfg.Destinations[0].AccessKeyID != "from-environment" {
		t.Fatal("the environment does not win over the file")
	}
	other := t.TempDir() + "/secrets"
	if err := os.WriteFile(other, []byte("AK=elsewhere\nSK=x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Unsetenv("AK")
	t.Setenv("S3REPLICAD_ENV_FILE", other)
	if cfg, err := Load(path); err != nil || cfg.Destinations[0].AccessKeyID != "elsewhere" {
		t.Fatalf("S3REPLICAD_ENV_FILE: %v %+v", err, cfg)
	}
	// A file that cannot be read is mentioned when a variable is missing.
	t.Setenv("S3REPLICAD_ENV_FILE", t.TempDir())
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "environment file could not be read") {
		t.Fatalf("unreadable environment file: %v", err)
	}
}
