package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/s3replicad/s3replicad/awsclient"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/internal/units"
	"github.com/s3replicad/s3replicad/s3store"
	"github.com/s3replicad/s3replicad/sqsqueue"
)

// cmdCheckConfig validates the file, then proves the queue and every bucket
// are reachable with the configured credentials and versioned. One line per
// problem on stderr; exit 2 on any.
func cmdCheckConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("check-config", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	path := config.Path(*cfgFlag)
	cfg, err := config.Load(path)
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				fmt.Fprintf(stderr, "%s: %s\n", path, p)
			}
			return errSilent{exitUsage}
		}
		return err
	}
	fmt.Fprintf(stdout, "ok: %s is valid (%d rules, %d destinations)\n", path, len(cfg.Rules), len(cfg.Destinations))
	var problems []string
	report := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	ok := func(format string, a ...any) { fmt.Fprintf(stdout, "ok: "+format+"\n", a...) }

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		report("state_dir %s: cannot create: %v", cfg.StateDir, errors.Unwrap(err))
	} else if f, err := os.CreateTemp(cfg.StateDir, ".check-*"); err != nil {
		report("state_dir %s: not writable: %v", cfg.StateDir, errors.Unwrap(err))
	} else {
		f.Close()
		os.Remove(f.Name())
		ok("state_dir %s is writable", cfg.StateDir)
	}

	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	q, err := sqsqueue.New(cctx, cfg.Queue.SQSConfig(cfg.Transfer.StallTimeout.D()))
	if err != nil {
		report("queue: %v", err)
	} else if _, err := q.Attributes(cctx); err != nil {
		report("queue.url %s: %s", cfg.Queue.URL, awsclient.Describe(err))
	} else {
		ok("queue %s is reachable", cfg.Queue.URL)
	}

	checkBucket := func(what string, st *s3store.Store, bucket string) {
		status, err := st.Versioning(cctx, bucket)
		switch {
		case err != nil:
			report("%s bucket %s: %s", what, bucket, awsclient.Describe(err))
		case status != "Enabled":
			if status == "" {
				status = "never enabled"
			}
			report("%s bucket %s: versioning is not enabled (%s); enable it before replicating", what, bucket, status)
		default:
			ok("%s bucket %s exists and is versioned", what, bucket)
		}
	}
	src, dests, err := stores(cctx, cfg, warnLogger(stderr))
	if err != nil {
		report("%v", err)
	} else {
		seen := map[string]bool{}
		for _, r := range cfg.Rules {
			if !seen["s\x00"+r.SourceBucket] {
				seen["s\x00"+r.SourceBucket] = true
				checkBucket("source", src, r.SourceBucket)
			}
			if d := dests[r.Destination]; d != nil && !seen[r.Destination+"\x00"+r.DestinationBucket] {
				seen[r.Destination+"\x00"+r.DestinationBucket] = true
				checkBucket("destination "+r.Destination, d, r.DestinationBucket)
			}
		}
	}
	inStore := cfg.ServerSideCopy()
	for _, d := range cfg.Destinations {
		if inStore[d.Name] {
			fmt.Fprintf(stdout, "note: destination %s is the source's endpoint: copies are made inside the store when its credentials can read the source (server_side_copy: auto)\n", d.Name)
		}
		if d.BandwidthLimit > 0 {
			fmt.Fprintf(stdout, "note: writes to destination %s are limited to %s/s\n", d.Name, units.Bytes(int64(d.BandwidthLimit)))
		}
	}
	if cfg.Cluster != nil {
		dc := cfg.DynamoConfig(warnLogger(stderr))
		if err := dynamostate.Check(ctx, dc); err != nil {
			report("cluster.dynamodb.table %s: %v (`s3replicad cluster init` creates it)", dc.Table, awsclient.Describe(err))
		} else {
			ok("cluster table %s exists and is ready (lease %s)", dc.Table, cfg.Cluster.Lease.D())
		}
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		if ln, err := net.Listen("tcp", cfg.Listen); err != nil {
			// Fine when the daemon itself is listening there.
			fmt.Fprintf(stdout, "note: listen %s is in use (by a running s3replicad?)\n", cfg.Listen)
		} else {
			ln.Close()
			ok("listen %s is free", cfg.Listen)
		}
	}
	for _, p := range problems {
		fmt.Fprintln(stderr, "problem: "+p)
	}
	if len(problems) > 0 {
		return errSilent{exitUsage}
	}
	fmt.Fprintln(stdout, "configuration and environment look good")
	return nil
}
