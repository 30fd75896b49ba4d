// Package config reads s3replicad's configuration file: YAML with ${VAR}
// expansion (from the environment, then the environment file beside it),
// every key known and checked, each problem named with its key and line,
// and the defaults an operator would expect. It also turns the file into
// the configurations of the engine, the adapters and the cluster's table.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/s3replicad/s3replicad/awsclient"
	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/units"
	"github.com/s3replicad/s3replicad/s3store"
	"github.com/s3replicad/s3replicad/sqsqueue"
)

// DefaultConfigPath is used when neither -config nor $S3REPLICAD_CONFIG is given.
const DefaultConfigPath = "/etc/s3replicad/config.yaml"

// Config is the configuration file.
type Config struct {
	StateDir        string          `yaml:"state_dir"`
	Listen          string          `yaml:"listen"`
	ShutdownTimeout Duration        `yaml:"shutdown_timeout"`
	Log             LogConfig       `yaml:"log"`
	Queue           QueueConfig     `yaml:"queue"`
	Source          EndpointConfig  `yaml:"source"`
	Destinations    []DestConfig    `yaml:"destinations"`
	Rules           []RuleConfig    `yaml:"rules"`
	Transfer        TransferConfig  `yaml:"transfer"`
	Retention       RetentionConfig `yaml:"retention"`
	// Cluster, when set, puts the state in a DynamoDB table that every
	// node running this configuration shares.
	Cluster *ClusterConfig `yaml:"cluster"`
	lines   map[string]int // key path -> line, for error messages
	path    string         // file it was read from
}

// LogConfig configures logging.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// QueueConfig is the SQS queue receiving the source's event notifications.
type QueueConfig struct {
	URL               string   `yaml:"url"`
	Region            string   `yaml:"region"`
	Endpoint          string   `yaml:"endpoint"`
	AccessKeyID       string   `yaml:"access_key_id"`
	SecretAccessKey   Secret   `yaml:"secret_access_key"`
	CAFile            string   `yaml:"ca_file"`
	WaitTime          Duration `yaml:"wait_time"`
	VisibilityTimeout Duration `yaml:"visibility_timeout"`
	Pollers           int      `yaml:"pollers"`
}

// EndpointConfig is an S3 endpoint and its credentials.
type EndpointConfig struct {
	Region          string `yaml:"region"`
	Endpoint        string `yaml:"endpoint"`
	PathStyle       bool   `yaml:"path_style"`
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey Secret `yaml:"secret_access_key"`
	SessionToken    Secret `yaml:"session_token"`
	CAFile          string `yaml:"ca_file"`
	// Checksums: "" (auto), when_required or when_supported.
	Checksums string `yaml:"checksums"`
}

// DestConfig is a named destination endpoint.
type DestConfig struct {
	Name           string `yaml:"name"`
	EndpointConfig `yaml:",inline"`
	// Integrity is how each write proves its bytes: crc32c (default) or md5.
	Integrity string `yaml:"integrity"`
	// ServerSideCopy: auto (default) copies inside the store when the
	// destination is the source's endpoint; off never does.
	ServerSideCopy string `yaml:"server_side_copy"`
	// BandwidthLimit caps bytes per second written to the destination.
	BandwidthLimit Rate `yaml:"bandwidth_limit"`
}

// RuleConfig is one replication rule.
type RuleConfig struct {
	ID                     string       `yaml:"id"`
	Priority               int          `yaml:"priority"`
	Enabled                *bool        `yaml:"enabled"`
	SourceBucket           string       `yaml:"source_bucket"`
	Filter                 FilterConfig `yaml:"filter"`
	Destination            string       `yaml:"destination"`
	DestinationBucket      string       `yaml:"destination_bucket"`
	DestinationPrefix      string       `yaml:"destination_prefix"`
	StorageClass           string       `yaml:"storage_class"`
	ReplicateDeleteMarkers bool         `yaml:"replicate_delete_markers"`
}

// FilterConfig selects keys: prefix AND all tags must match.
type FilterConfig struct {
	Prefix string            `yaml:"prefix"`
	Tags   map[string]string `yaml:"tags"`
}

// TransferConfig tunes the copier.
type TransferConfig struct {
	Workers            int  `yaml:"workers"`
	PartSize           Size `yaml:"part_size"`
	PartConcurrency    int  `yaml:"part_concurrency"`
	MultipartThreshold Size `yaml:"multipart_threshold"`
	// BufferMemory bounds the memory held by copy buffers.
	BufferMemory Size `yaml:"buffer_memory"`
	// StallTimeout abandons (and retries) a request that has sent and
	// received nothing for this long.
	StallTimeout Duration `yaml:"stall_timeout"`
	// OrderWindow holds a fresh event's copy until this long after the
	// event, so that an older version of the key whose event crossed it in
	// the queue is written first rather than late (with a copy on top).
	OrderWindow Duration `yaml:"order_window"`
}

// ClusterConfig is the cluster mode: several nodes share the queue and
// one DynamoDB table.
type ClusterConfig struct {
	DynamoDB DynamoDBConfig `yaml:"dynamodb"`
	// Lease is how long a node that stops renewing keeps its work.
	Lease Duration `yaml:"lease"`
	// Shards is the number of leases the work is split into, fixed by
	// `cluster init` (later values are ignored).
	Shards int `yaml:"shards"`
	// NodeID names this node (default: the host name); a random part,
	// new at every start, is added to it.
	NodeID string `yaml:"node_id"`
}

// DynamoDBConfig is the cluster's table.
type DynamoDBConfig struct {
	Table           string `yaml:"table"`
	Region          string `yaml:"region"`
	Endpoint        string `yaml:"endpoint"`
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey Secret `yaml:"secret_access_key"`
}

// RetentionConfig bounds how long finished operations stay in the state file.
type RetentionConfig struct {
	Finished Duration `yaml:"finished"`
}

// Duration is a Go duration in YAML ("90s", "5m").
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use a Go duration like 90s, 5m or 1h30m)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count in YAML: 1048576, 16MiB, 1GiB, 500KB.
type Size int64

var sizeRe = regexp.MustCompile(`^\s*([0-9]+)\s*([A-Za-z]*)\s*$`)

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1000,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1000 * 1000,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1000 * 1000 * 1000,
	"tib": 1 << 40, "tb": 1000 * 1000 * 1000 * 1000,
}

// ParseSize parses a size with an optional unit.
func ParseSize(s string) (int64, error) {
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size (use bytes or a unit: KiB, MiB, GiB)", s)
	}
	unit, ok := sizeUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("%q has an unknown unit %q (use KiB, MiB or GiB)", s, m[2])
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n > (1<<62)/unit {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * unit, nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*s = Size(v)
	return nil
}

// Rate is bytes per second in YAML: 50MiB, 50MiB/s, 1GB/s. 0 is unlimited.
type Rate int64

// UnmarshalYAML implements yaml.Unmarshaler.
func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(strings.TrimSuffix(strings.TrimSpace(n.Value), "/s"))
	if err != nil {
		return fmt.Errorf("line %d: %v per second", n.Line, err)
	}
	*r = Rate(v)
	return nil
}

// Secret is a credential: it never prints.
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// LogValue keeps secrets out of structured logs.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON keeps secrets out of JSON output.
func (s Secret) MarshalJSON() ([]byte, error) { return strconv.AppendQuote(nil, s.String()), nil }

// Reveal returns the secret itself, for the SDK only.
func (s Secret) Reveal() string { return string(s) }

// Error is a configuration problem (the commands exit 2 on it).
type Error struct {
	File     string
	Problems []string
}

func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("config %s: %s", e.File, e.Problems[0])
	}
	return fmt.Sprintf("config %s: %d problems:\n  %s", e.File, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Path resolves -config, then $S3REPLICAD_CONFIG, then the default.
func Path(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv("S3REPLICAD_CONFIG"); v != "" {
		return v
	}
	return DefaultConfigPath
}

// Load reads, expands, decodes, defaults and validates a file.
// Variables come from the environment, then from the environment file
// (see envFileLookup).
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{File: path, Problems: []string{fmt.Sprintf("cannot read: %v", errors.Unwrap(err))}}
	}
	lookup, unreadable := envFileLookup(path)
	cfg, err := Parse(path, raw, lookup)
	var ce *Error
	if unreadable != nil && errors.As(err, &ce) && strings.Contains(err.Error(), "is not set") {
		ce.Problems = append(ce.Problems, fmt.Sprintf("(the environment file could not be read either: %v)", unreadable))
	}
	return cfg, err
}

// EnvFileName is the environment file looked for beside the configuration
// when $S3REPLICAD_ENV_FILE does not name one: the service's unit reads the
// same file (EnvironmentFile=), so that commands an operator runs by hand
// see the values the service sees.
const EnvFileName = "env"

// envFileLookup returns a lookup of the process's environment, then of
// the environment file (NAME=value lines, as systemd reads them). A file
// that exists but cannot be read is returned as an error for the caller to
// mention if a variable turns out to be missing: the service itself gets
// the values from systemd and needs no read of its own.
func envFileLookup(configPath string) (func(string) (string, bool), error) {
	path := os.Getenv("S3REPLICAD_ENV_FILE")
	if path == "" {
		path = filepath.Join(filepath.Dir(configPath), EnvFileName)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		return os.LookupEnv, err
	}
	vars := parseEnvFile(raw)
	return func(name string) (string, bool) {
		if v, ok := os.LookupEnv(name); ok {
			return v, true
		}
		v, ok := vars[name]
		return v, ok
	}, nil
}

// parseEnvFile reads NAME=value lines; blank lines and lines starting
// with # or ; are comments; a value in matching quotes loses them.
func parseEnvFile(raw []byte) map[string]string {
	vars := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		vars[strings.TrimSpace(name)] = value
	}
	return vars
}

var envRe = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// LoadStateConfig reads only what status and retry need, the state
// directory: variables that the rest of the file uses (secrets, which the
// service's environment file holds) need not be set. It is an error only
// when state_dir itself cannot be read.
func LoadState(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{File: path, Problems: []string{fmt.Sprintf("cannot read: %v", errors.Unwrap(err))}}
	}
	// state_dir itself must not name an unset variable.
	lookup, _ := envFileLookup(path)
	var top struct {
		StateDir string `yaml:"state_dir"`
	}
	if yaml.Unmarshal(raw, &top) == nil {
		for _, m := range envRe.FindAllStringSubmatch(top.StateDir, -1) {
			if _, ok := lookup(m[1]); !ok {
				line := 0
				if cfgLines, err := parseConfig(path, raw, func(string) (string, bool) { return "", true }, false); err == nil {
					line = cfgLines.lines["state_dir"]
				}
				return nil, &Error{File: path, Problems: []string{fmt.Sprintf("line %d: state_dir: environment variable %s is not set", line, m[1])}}
			}
		}
	}
	return parseConfig(path, raw, func(name string) (string, bool) {
		v, _ := lookup(name)
		return v, true
	}, false)
}

// Parse is Load over bytes, with an injectable environment.
func Parse(path string, raw []byte, lookup func(string) (string, bool)) (*Config, error) {
	return parseConfig(path, raw, lookup, true)
}

func parseConfig(path string, raw []byte, lookup func(string) (string, bool), validate bool) (*Config, error) {
	fail := func(format string, args ...any) error {
		return &Error{File: path, Problems: []string{fmt.Sprintf(format, args...)}}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fail("%s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	cfg := &Config{lines: map[string]int{}, path: path}
	if len(doc.Content) == 0 {
		return nil, fail("the file is empty")
	}
	if err := walk(doc.Content[0], reflect.TypeOf(*cfg), "", cfg.lines, lookup); err != nil {
		return nil, fail("%v", err)
	}
	if err := doc.Content[0].Decode(cfg); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
		return nil, fail("%s", nameKeys(msg, cfg.lines))
	}
	cfg.applyDefaults()
	if !validate {
		return cfg, nil
	}
	if problems := cfg.validate(); len(problems) > 0 {
		return nil, &Error{File: path, Problems: problems}
	}
	return cfg, nil
}

var lineRe = regexp.MustCompile(`(?m)^(\s*)line (\d+): `)

// nameKeys adds the key to each "line N: problem" of a decoding error, so
// that "line 8: bad value" reads "line 8: transfer.part_size: bad value".
func nameKeys(msg string, lines map[string]int) string {
	return lineRe.ReplaceAllStringFunc(msg, func(m string) string {
		sub := lineRe.FindStringSubmatch(m)
		n, _ := strconv.Atoi(sub[2])
		// The key holding the value is the one on that line with no child
		// on it; with several (a flow mapping), the line must do.
		var on []string
		for path, l := range lines {
			if l == n {
				on = append(on, path)
			}
		}
		var leaves []string
		for _, p := range on {
			parent := false
			for _, q := range on {
				if strings.HasPrefix(q, p+".") || strings.HasPrefix(q, p+"[") {
					parent = true
				}
			}
			if !parent {
				leaves = append(leaves, p)
			}
		}
		if len(leaves) != 1 {
			return m
		}
		return fmt.Sprintf("%sline %d: %s: ", sub[1], n, leaves[0])
	})
}

// walk checks every mapping key against the Go type (unknown keys are
// errors naming the key and line), records where each key is, and expands
// ${VAR} in scalar values.
func walk(n *yaml.Node, t reflect.Type, path string, lines map[string]int, lookup func(string) (string, bool)) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.AliasNode:
		return fmt.Errorf("line %d: YAML aliases are not supported", n.Line)
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "${") {
			return nil
		}
		var missing string
		n.Value = envRe.ReplaceAllStringFunc(n.Value, func(m string) string {
			name := envRe.FindStringSubmatch(m)[1]
			v, ok := lookup(name)
			if !ok && missing == "" {
				missing = name
			}
			return v
		})
		if missing != "" {
			return fmt.Errorf("line %d: %s: environment variable %s is not set", n.Line, path, missing)
		}
		return nil
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice {
			return fmt.Errorf("line %d: %s must not be a list", n.Line, path)
		}
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			lines[p] = c.Line
			if err := walk(c, t.Elem(), p, lines, lookup); err != nil {
				return err
			}
		}
		return nil
	case yaml.MappingNode:
		switch t.Kind() {
		case reflect.Map:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := join(path, n.Content[i].Value)
				lines[p] = n.Content[i].Line
				if err := walk(n.Content[i+1], t.Elem(), p, lines, lookup); err != nil {
					return err
				}
			}
			return nil
		case reflect.Struct:
			fields := yamlFields(t)
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				ft, ok := fields[k.Value]
				if !ok {
					where := "at the top level"
					if path != "" {
						where = "in " + path
					}
					return fmt.Errorf("line %d: unknown key %q %s", k.Line, k.Value, where)
				}
				p := join(path, k.Value)
				lines[p] = k.Line
				if err := walk(n.Content[i+1], ft, p, lines, lookup); err != nil {
					return err
				}
			}
			return nil
		}
		return fmt.Errorf("line %d: %s must be a single value, not a mapping", n.Line, path)
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps the YAML names of a struct's fields (inline ones
// flattened) to their types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if tag == "" || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if opts == "inline" {
			for k, v := range yamlFields(f.Type) {
				out[k] = v
			}
			continue
		}
		out[name] = f.Type
	}
	return out
}

func (c *Config) applyDefaults() {
	if c.StateDir == "" {
		c.StateDir = "/var/lib/s3replicad"
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:9464"
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = Duration(30 * time.Second)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	// 0s is a valid wait (short polling): default only when not given.
	if !c.given("queue.wait_time") {
		c.Queue.WaitTime = Duration(20 * time.Second)
	}
	if c.Queue.VisibilityTimeout == 0 {
		c.Queue.VisibilityTimeout = Duration(5 * time.Minute)
	}
	if c.Queue.Pollers == 0 {
		c.Queue.Pollers = 8
	}
	if c.Queue.Region == "" {
		c.Queue.Region = c.Source.Region
	}
	if c.Source.Region == "" {
		c.Source.Region = "us-east-1"
	}
	for i := range c.Destinations {
		if c.Destinations[i].Region == "" {
			c.Destinations[i].Region = "us-east-1"
		}
	}
	for i := range c.Rules {
		if c.Rules[i].Enabled == nil {
			t := true
			c.Rules[i].Enabled = &t
		}
	}
	if c.Transfer.Workers == 0 {
		c.Transfer.Workers = 32
	}
	if c.Transfer.PartSize == 0 {
		c.Transfer.PartSize = 16 << 20
	}
	if c.Transfer.PartConcurrency == 0 {
		c.Transfer.PartConcurrency = 4
	}
	if !c.given("transfer.multipart_threshold") {
		c.Transfer.MultipartThreshold = 32 << 20
	}
	if c.Transfer.StallTimeout == 0 {
		c.Transfer.StallTimeout = Duration(awsclient.DefaultStallTimeout)
	}
	// 0s turns the hold off: default only when not given.
	if !c.given("transfer.order_window") {
		// Crossed events of one key mostly arrive within a receive or two;
		// a longer hold delays every burst's copies by as much.
		c.Transfer.OrderWindow = Duration(250 * time.Millisecond)
	}
	if c.Transfer.BufferMemory == 0 {
		c.Transfer.BufferMemory = Size(c.Transfer.PartConcurrency) * c.Transfer.PartSize
	}
	for i := range c.Destinations {
		d := &c.Destinations[i]
		if d.Integrity == "" {
			d.Integrity = s3store.IntegrityCRC32C
		}
		if d.ServerSideCopy == "" {
			d.ServerSideCopy = "auto"
		}
	}
	if c.Retention.Finished == 0 {
		c.Retention.Finished = Duration(14 * 24 * time.Hour)
	}
	if cl := c.Cluster; cl != nil {
		if cl.Lease == 0 {
			cl.Lease = Duration(dynamostate.DefaultLease)
		}
		if cl.Shards == 0 {
			cl.Shards = dynamostate.DefaultShards
		}
		if cl.DynamoDB.Region == "" {
			cl.DynamoDB.Region = c.Source.Region
		}
	}
}

// loops tells whether a rule writes where it reads: the source bucket on
// the source's endpoint, under keys its own filter selects.
func (c *Config) loops(r RuleConfig) bool {
	d := c.Destination(r.Destination)
	if d.Name == "" || r.DestinationBucket != r.SourceBucket || !SameEndpoint(d.EndpointConfig, c.Source) {
		return false
	}
	// Replicas are prefix+key; the filter selects keys starting with
	// filter.prefix. They overlap unless neither prefix extends the other.
	p, f := r.DestinationPrefix, r.Filter.Prefix
	return p == "" || strings.HasPrefix(p, f) || strings.HasPrefix(f, p)
}

// SameEndpoint tells two endpoints that are one store.
func SameEndpoint(a, b EndpointConfig) bool {
	return strings.EqualFold(strings.TrimRight(a.Endpoint, "/"), strings.TrimRight(b.Endpoint, "/")) && a.Region == b.Region
}

// given tells whether the file sets a key, for keys where 0 is a value.
func (c *Config) given(path string) bool {
	_, ok := c.lines[path]
	return ok
}

// at names a key with its line, for error messages.
func (c *Config) at(path string) string {
	if l, ok := c.lines[path]; ok {
		return fmt.Sprintf("line %d: %s", l, path)
	}
	return path
}

func (c *Config) validate() []string {
	var p []string
	add := func(path, format string, args ...any) {
		p = append(p, c.at(path)+": "+fmt.Sprintf(format, args...))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen", "%q is not host:port", c.Listen)
	}
	if c.ShutdownTimeout < 0 {
		add("shutdown_timeout", "must be positive")
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add("log.format", "%q is not text or json", c.Log.Format)
	}
	if c.Queue.URL == "" {
		add("queue.url", "is required (the SQS queue that receives the source bucket's event notifications)")
	} else if !strings.HasPrefix(c.Queue.URL, "https://") && !strings.HasPrefix(c.Queue.URL, "http://") {
		add("queue.url", "%q is not an http(s) URL", c.Queue.URL)
	}
	if w := c.Queue.WaitTime.D(); w < 0 || w > 20*time.Second {
		add("queue.wait_time", "must be between 0s and 20s (SQS long-poll limit)")
	}
	if v := c.Queue.VisibilityTimeout.D(); v < time.Second || v > 12*time.Hour {
		add("queue.visibility_timeout", "must be between 1s and 12h")
	} else if v <= c.Queue.WaitTime.D() {
		add("queue.visibility_timeout", "must be longer than queue.wait_time")
	}
	if c.Queue.Pollers < 1 || c.Queue.Pollers > 64 {
		add("queue.pollers", "must be between 1 and 64")
	}
	checkEndpoint := func(path string, e EndpointConfig) {
		if e.Endpoint != "" && !strings.HasPrefix(e.Endpoint, "https://") && !strings.HasPrefix(e.Endpoint, "http://") {
			add(path+".endpoint", "%q is not an http(s) URL", e.Endpoint)
		}
		if (e.AccessKeyID == "") != (e.SecretAccessKey == "") {
			add(path+".access_key_id", "access_key_id and secret_access_key go together: set both or neither")
		}
		switch e.Checksums {
		case s3store.ChecksumAuto, s3store.ChecksumWhenRequired, s3store.ChecksumWhenSupported:
		default:
			add(path+".checksums", "%q is not when_required or when_supported", e.Checksums)
		}
	}
	checkEndpoint("source", c.Source)
	if len(c.Destinations) == 0 {
		add("destinations", "at least one destination is required")
	}
	names := map[string]bool{}
	for i, d := range c.Destinations {
		path := fmt.Sprintf("destinations[%d]", i)
		switch {
		case d.Name == "":
			add(path, "name is required")
		case names[d.Name]:
			add(path+".name", "%q is used twice", d.Name)
		}
		names[d.Name] = true
		checkEndpoint(path, d.EndpointConfig)
		if d.Integrity != s3store.IntegrityCRC32C && d.Integrity != s3store.IntegrityMD5 {
			add(path+".integrity", "%q is not crc32c or md5", d.Integrity)
		}
		if d.ServerSideCopy != "auto" && d.ServerSideCopy != "off" {
			add(path+".server_side_copy", "%q is not auto or off", d.ServerSideCopy)
		}
		if d.BandwidthLimit < 0 || d.BandwidthLimit > 0 && d.BandwidthLimit < 64<<10 {
			add(path+".bandwidth_limit", "must be 0 (unlimited) or at least 64KiB/s")
		}
	}
	if len(c.Rules) == 0 {
		add("rules", "at least one rule is required")
	}
	ids := map[string]bool{}
	type target struct{ src, dest, bucket string }
	prio := map[target]map[int]string{}
	for i, r := range c.Rules {
		path := fmt.Sprintf("rules[%d]", i)
		switch {
		case r.ID == "":
			add(path, "id is required")
		case ids[r.ID]:
			add(path+".id", "%q is used twice", r.ID)
		}
		ids[r.ID] = true
		if r.SourceBucket == "" {
			add(path, "source_bucket is required")
		}
		if r.Destination == "" {
			add(path, "destination is required")
		} else if !names[r.Destination] {
			add(path+".destination", "%q is not the name of a destination", r.Destination)
		}
		if r.DestinationBucket == "" {
			add(path, "destination_bucket is required")
		}
		if c.loops(r) {
			add(path+".destination_bucket", "%q is the source bucket on the same endpoint: every replica would be an event to replicate again. Use another bucket, or a destination_prefix outside the rule's filter", r.DestinationBucket)
		}
		if *r.Enabled {
			t := target{r.SourceBucket, r.Destination, r.DestinationBucket}
			if prio[t] == nil {
				prio[t] = map[int]string{}
			}
			if other, ok := prio[t][r.Priority]; ok {
				add(path+".priority", "rules %q and %q replicate %s to the same bucket with the same priority %d: give them different priorities", other, r.ID, r.SourceBucket, r.Priority)
			}
			prio[t][r.Priority] = r.ID
		}
	}
	t := c.Transfer
	if t.Workers < 1 || t.Workers > 1024 {
		add("transfer.workers", "must be between 1 and 1024")
	}
	if t.PartSize < 5<<20 || t.PartSize > 5<<30 {
		add("transfer.part_size", "must be between 5MiB and 5GiB (S3's part size limits)")
	}
	if t.PartConcurrency < 1 || t.PartConcurrency > 256 {
		add("transfer.part_concurrency", "must be between 1 and 256")
	}
	if t.MultipartThreshold < 1 || t.MultipartThreshold > 5<<30 {
		add("transfer.multipart_threshold", "must be between 1 byte and 5GiB (the largest single PUT); objects above it are copied in parts")
	}
	if t.BufferMemory < t.PartSize {
		add("transfer.buffer_memory", "must be at least transfer.part_size (%s); the default is part_concurrency x part_size", units.Bytes(int64(t.PartSize)))
	} else if t.BufferMemory > 64<<30 {
		add("transfer.buffer_memory", "must be at most 64GiB")
	}
	if st := t.StallTimeout.D(); st < time.Second || st > time.Hour {
		add("transfer.stall_timeout", "must be between 1s and 1h")
	}
	if ow := t.OrderWindow.D(); ow < 0 || ow > time.Minute {
		add("transfer.order_window", "must be between 0s (no hold) and 1m")
	}
	if c.Retention.Finished < Duration(time.Hour) {
		add("retention.finished", "must be at least 1h")
	}
	if cl := c.Cluster; cl != nil {
		d := cl.DynamoDB
		if d.Table == "" {
			add("cluster.dynamodb.table", "is required (the DynamoDB table the nodes share; `s3replicad cluster init` creates it)")
		}
		if d.Endpoint != "" && !strings.HasPrefix(d.Endpoint, "https://") && !strings.HasPrefix(d.Endpoint, "http://") {
			add("cluster.dynamodb.endpoint", "%q is not an http(s) URL", d.Endpoint)
		}
		if (d.AccessKeyID == "") != (d.SecretAccessKey == "") {
			add("cluster.dynamodb.access_key_id", "access_key_id and secret_access_key go together: set both or neither")
		}
		if l := cl.Lease.D(); l < 3*time.Second || l > 10*time.Minute {
			add("cluster.lease", "must be between 3s and 10m")
		} else if l >= c.Queue.VisibilityTimeout.D() {
			add("cluster.lease", "must be shorter than queue.visibility_timeout (%s)", c.Queue.VisibilityTimeout.D())
		}
		if cl.Shards < 1 || cl.Shards > dynamostate.MaxShards {
			add("cluster.shards", "must be between 1 and %d", dynamostate.MaxShards)
		}
	}
	return p
}

// EngineRules converts the rules for the engine.
func (c *Config) EngineRules() []engine.Rule {
	out := make([]engine.Rule, len(c.Rules))
	for i, r := range c.Rules {
		out[i] = engine.Rule{
			ID: r.ID, Priority: r.Priority, Enabled: *r.Enabled, SourceBucket: r.SourceBucket,
			Prefix: r.Filter.Prefix, Tags: r.Filter.Tags, Destination: r.Destination,
			DestinationBucket: r.DestinationBucket, DestinationPrefix: r.DestinationPrefix,
			StorageClass: r.StorageClass, ReplicateDeleteMarkers: r.ReplicateDeleteMarkers,
		}
	}
	return out
}

// SelectRules returns the rules named by -rule (all when id is empty).
func (c *Config) SelectRules(id string) ([]engine.Rule, error) {
	all := c.EngineRules()
	if id == "" {
		return all, nil
	}
	for _, r := range all {
		if r.ID == id {
			return []engine.Rule{r}, nil
		}
	}
	return nil, &Error{File: c.path, Problems: []string{fmt.Sprintf("-rule: no rule with id %q", id)}}
}

// RuleFor is the rule id names, or the only one there is (restore,
// verify -restore).
func (c *Config) RuleFor(id string) (engine.Rule, error) {
	rules, err := c.SelectRules(id)
	if err != nil {
		return engine.Rule{}, err
	}
	if len(rules) != 1 {
		ids := make([]string, len(rules))
		for i, r := range rules {
			ids[i] = r.ID
		}
		return engine.Rule{}, &Error{File: c.path, Problems: []string{"-rule is needed: one of " + strings.Join(ids, ", ")}}
	}
	return rules[0], nil
}

// File is the path the configuration was read from.
func (c *Config) File() string { return c.path }

// Destination returns the destination named name.
func (c *Config) Destination(name string) DestConfig {
	for _, d := range c.Destinations {
		if d.Name == name {
			return d
		}
	}
	return DestConfig{}
}

// ServerSideCopy names the destinations whose copies may be made inside
// the store: server_side_copy is auto and they are the source's endpoint.
func (c *Config) ServerSideCopy() map[string]bool {
	out := map[string]bool{}
	for _, d := range c.Destinations {
		out[d.Name] = d.ServerSideCopy == "auto" && SameEndpoint(d.EndpointConfig, c.Source)
	}
	return out
}

func (d DestConfig) StoreConfig(maxConns int, stall time.Duration) s3store.Config {
	c := d.EndpointConfig.StoreConfig(maxConns, stall)
	c.Integrity = d.Integrity
	return c
}

func (e EndpointConfig) StoreConfig(maxConns int, stall time.Duration) s3store.Config {
	return s3store.Config{
		Endpoint: e.Endpoint, Region: e.Region, PathStyle: e.PathStyle,
		AccessKeyID: e.AccessKeyID, SecretAccessKey: e.SecretAccessKey.Reveal(), SessionToken: e.SessionToken.Reveal(),
		CAFile: e.CAFile, Checksums: e.Checksums, MaxConns: maxConns, StallTimeout: stall,
		UserAgent: "s3replicad/" + Version,
	}
}

// Version is the build's version (main sets it from -ldflags): requests
// carry it in their User-Agent.
var Version = "dev"

func (q QueueConfig) SQSConfig(callTimeout time.Duration) sqsqueue.Config {
	return sqsqueue.Config{
		URL: q.URL, Region: q.Region, Endpoint: q.Endpoint, AccessKeyID: q.AccessKeyID,
		SecretAccessKey: q.SecretAccessKey.Reveal(), WaitTime: q.WaitTime.D(),
		VisibilityTimeout: q.VisibilityTimeout.D(), CAFile: q.CAFile, CallTimeout: callTimeout,
	}
}

// dynamoConfig is the cluster's table for dynamostate.
func (c *Config) DynamoConfig(log *slog.Logger) dynamostate.Config {
	cl := c.Cluster
	host, _ := os.Hostname()
	name := cl.NodeID
	if name == "" {
		name = host
	}
	// The name plus a random part, new at every start: a restarted node
	// must never take its predecessor's leases for its own (that process
	// may have left writes landing).
	id := dynamostate.DefaultNodeID(name)
	return dynamostate.Config{Table: cl.DynamoDB.Table, Region: cl.DynamoDB.Region, Endpoint: cl.DynamoDB.Endpoint,
		AccessKeyID: cl.DynamoDB.AccessKeyID, SecretAccessKey: cl.DynamoDB.SecretAccessKey.Reveal(),
		NodeID: id, Host: host, Lease: cl.Lease.D(), Shards: cl.Shards, Logger: log}
}
