package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/reconcile"
)

// cmdVerify compares every selected source version with the destination,
// walking both listings side by side. It prints one line per version or
// key that is missing or different, and destination keys the source does
// not have as extra; it exits 1 when anything is missing or different. It
// never writes.
func cmdVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("verify", stderr)
	ruleID := fs.String("rule", "", "verify only this rule (default: every rule)")
	restored := fs.Bool("restore", false, "verify a restored bucket (-bucket) against what a restore of -rule as of -as-of writes")
	asOf := fs.String("as-of", "", "with -restore: the time restored (default: now)")
	bucket := fs.String("bucket", "", "with -restore: the restored bucket")
	endpoint := fs.String("endpoint", "source", "with -restore: where that bucket is: source or destination")
	prefix := fs.String("prefix", "", "with -restore: only the keys starting with this")
	cfg, _, err := loadFor(fs, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	if *restored {
		return verifyRestore(ctx, cfg, *ruleID, *asOf, *bucket, *endpoint, *prefix, stdout, stderr)
	}
	rules, err := cfg.SelectRules(*ruleID)
	if err != nil {
		return err
	}
	src, dests, err := stores(ctx, cfg, warnLogger(stderr))
	if err != nil {
		return err
	}
	show := reconcile.NewProgressPrinter(stderr, "verify")
	p := &reconcile.Progress{Started: time.Now(), Listing: true}
	counts := map[string]int{}
	heads, err := reconcile.Verify(ctx, src, func(r engine.Rule) reconcile.Destination { return dests[r.Destination] }, src, rules,
		func(rule engine.Rule, f reconcile.Finding) {
			counts[f.Kind]++
			fmt.Fprintf(stdout, "%s (rule %s)\n", f, rule.ID)
		},
		func(n int) { p.Listed += int64(n); show(p) })
	if err != nil {
		return err
	}
	p.Listing, p.Done = false, true
	show(p)
	fmt.Fprintf(stderr, "verify: %d source versions checked, %d missing, %d different, %d current versions wrong, %d destination keys with no source key (%d HEAD requests)\n",
		p.Listed, counts["missing"], counts["different"], counts["current"], counts["extra"], heads)
	if counts["missing"]+counts["different"]+counts["current"] > 0 {
		return errSilent{exitFailure}
	}
	return nil
}

// verifyRestore compares a restored bucket with what a restore of the rule
// as of a time writes; exit 1 when anything differs.
func verifyRestore(ctx context.Context, cfg *config.Config, ruleID, asOf, bucket, endpoint, prefix string, stdout, stderr io.Writer) error {
	if bucket == "" {
		return &usageError{"verify -restore needs -bucket NAME"}
	}
	if endpoint != "source" && endpoint != "destination" {
		return &usageError{fmt.Sprintf("-endpoint %q: use source or destination", endpoint)}
	}
	rule, err := cfg.RuleFor(ruleID)
	if err != nil {
		return err
	}
	v := &reconcile.VerifyRestore{Rule: rule, Prefix: prefix, Bucket: bucket, Latest: asOf == "", AsOf: time.Now()}
	if asOf != "" {
		if v.AsOf, err = parseAsOf(asOf); err != nil {
			return err
		}
	}
	src, dests, err := stores(ctx, cfg, warnLogger(stderr))
	if err != nil {
		return err
	}
	v.Replica, v.Target = dests[rule.Destination], src
	if endpoint == "destination" {
		v.Target = dests[rule.Destination]
	}
	counts := map[string]int{}
	n, err := v.Run(ctx, func(f reconcile.Finding) {
		counts[f.Kind]++
		fmt.Fprintln(stdout, f)
	})
	if err != nil {
		return fmt.Errorf("verify restore: %w", err)
	}
	fmt.Fprintf(stderr, "verify -restore: %d keys checked, %d missing, %d different, %d restored although deleted or not there at that time (%d HEAD requests)\n",
		n, counts["missing"], counts["different"], counts["extra"], v.Heads)
	if len(counts) > 0 {
		return errSilent{exitFailure}
	}
	return nil
}
