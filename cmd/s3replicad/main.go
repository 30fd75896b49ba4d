// Command s3replicad replicates S3 object versions to any S3-compatible
// store from the source bucket's event notifications.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/s3replicad/s3replicad/config"
)

// Exit codes (the contract).
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure; for verify: differences found
	exitUsage   = 2 // usage or configuration error
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal gets the default action: exit at once
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// usageError is a mistake on the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// errSilent carries an exit code for a failure already reported.
type errSilent struct{ code int }

func (e errSilent) Error() string { return fmt.Sprintf("exit %d", e.code) }

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var silent errSilent
	if errors.As(err, &silent) {
		return silent.code
	}
	fmt.Fprintln(stderr, "s3replicad:", err)
	var ce *config.Error
	var ue *usageError
	if errors.As(err, &ce) || errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

const usage = `usage: s3replicad COMMAND [-config FILE] [flags]

commands:
  run            replicate from the queue; serve /metrics, /healthz, /readyz
  backfill       replicate versions that exist on the source but not on the destination
  verify         compare source and destination; exit 1 when anything differs
  status         show the backlog, failures and backfill progress
  retry          put failed operations back to pending
  restore        write a rule's replica as of a time back into a bucket
  cluster init   create the DynamoDB table of the cluster mode
  check-config   validate the configuration and check credentials, queue and buckets
  policy         print the IAM policy the source side needs
  version        print version information

The configuration file is -config, else $S3REPLICAD_CONFIG, else ` + config.DefaultConfigPath + `.
Run 's3replicad COMMAND -h' for a command's flags.
`

// command is one subcommand.
type command func(ctx context.Context, args []string, stdout, stderr io.Writer) error

func commands() map[string]command {
	return map[string]command{
		"run":          cmdRun,
		"backfill":     cmdBackfill,
		"verify":       cmdVerify,
		"status":       cmdStatus,
		"retry":        cmdRetry,
		"restore":      cmdRestore,
		"cluster":      cmdCluster,
		"check-config": cmdCheckConfig,
		"policy":       cmdPolicy,
		"version":      cmdVersion,
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	config.Version = version
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &usageError{"no command given"}
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	if name == "-version" || name == "--version" {
		name = "version"
	}
	cmd, ok := commands()[name]
	if !ok {
		fmt.Fprint(stderr, usage)
		return &usageError{fmt.Sprintf("unknown command %q", name)}
	}
	return cmd(ctx, args[1:], stdout, stderr)
}

// flags builds a subcommand's flag set with the common -config flag.
func flags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("s3replicad "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("config", "", "configuration file (default $S3REPLICAD_CONFIG, then "+config.DefaultConfigPath+")")
	return fs, cfg
}

// parse parses flags; a flag error is a usage error (exit 2).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	return nil
}

// newLogger builds the process's logger: text or JSON on stderr. Text
// lines written to the journal leave the time out: journald stamps every
// line itself. JSON lines always carry it, for the pipelines that read
// them.
func newLogger(c config.LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(c.Level)))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	if toJournal(w) {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// loadStateFor parses flags and loads the state directory from the
// configuration, for the commands that need nothing else of it.
func loadStateFor(fs *flag.FlagSet, cfgFlag *string, args []string) (*config.Config, error) {
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	return config.LoadState(config.Path(*cfgFlag))
}

// loadFor parses flags, loads the configuration and builds the logger.
func loadFor(fs *flag.FlagSet, cfgFlag *string, args []string, stderr io.Writer) (*config.Config, *slog.Logger, error) {
	if err := parse(fs, args); err != nil {
		return nil, nil, err
	}
	cfg, err := config.Load(config.Path(*cfgFlag))
	if err != nil {
		return nil, nil, err
	}
	return cfg, newLogger(cfg.Log, stderr), nil
}
