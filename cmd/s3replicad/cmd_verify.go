package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// cmdVerify compares every selected source version with the destination.
// It prints one line per key that is missing or different, and exits 1
// when there is any. It never writes.
func cmdVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("verify", stderr)
	ruleID := fs.String("rule", "", "verify only this rule (default: every rule)")
	cfg, _, err := loadFor(fs, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	rules, err := cfg.SelectRules(*ruleID)
	if err != nil {
		return err
	}
	src, dests, err := stores(ctx, cfg, warnLogger(stderr))
	if err != nil {
		return err
	}
	show := newProgressPrinter(stderr, "verify")
	p := &backfillProgress{Started: time.Now(), Listing: true}
	var missing, different, extra int
	for _, rule := range rules {
		if !rule.Enabled {
			continue
		}
		dst := dests[rule.Destination]
		err := eachKey(ctx, src, rule.SourceBucket, rule.Prefix, "", func(key string, all []engine.Version) error {
			p.Listed += int64(len(all))
			show(p)
			vs, err := selected(ctx, src, rule, rule.SourceBucket, key, all)
			if err != nil || len(vs) == 0 {
				return err
			}
			destKey := rule.DestinationPrefix + key
			have, err := inspect(ctx, dst, rule.DestinationBucket, destKey)
			if err != nil {
				return err
			}
			onSource := map[string]bool{}
			for _, v := range vs {
				onSource[v.VersionID] = true
				if v.DeleteMarker {
					continue
				}
				r, ok := have.bySource[v.VersionID]
				if !ok {
					missing++
					fmt.Fprintf(stdout, "missing    %s  version %s (rule %s)\n", key, orNull(v.VersionID), rule.ID)
					continue
				}
				if same, why := sameContent(v, r); !same {
					different++
					fmt.Fprintf(stdout, "different  %s  version %s: %s (rule %s)\n", key, orNull(v.VersionID), why, rule.ID)
				}
			}
			latest := vs[0]
			switch {
			case latest.DeleteMarker:
				if rule.ReplicateDeleteMarkers && len(rule.Tags) == 0 && (have.current == nil || !have.current.DeleteMarker) {
					different++
					fmt.Fprintf(stdout, "current    %s: deleted on the source (delete marker) but not on the destination (rule %s)\n", key, rule.ID)
				}
			case latest.IsLatest:
				cur := have.current
				switch {
				case cur == nil:
					// reported as missing above
				case cur.source == latest.VersionID:
				case cur.source != "" && !onSource[cur.source] && !cur.DeleteMarker:
					// The destination's current version replicates a version
					// deleted on the source: version deletes are never
					// propagated, so this is expected.
				default:
					different++
					what := "a version that is not a replica"
					if cur.DeleteMarker {
						what = "a delete marker"
					} else if cur.source != "" {
						what = "a replica of version " + cur.source
					}
					fmt.Fprintf(stdout, "current    %s: destination's current version is %s, source's is %s (rule %s)\n", key, what, orNull(latest.VersionID), rule.ID)
				}
			}
			extra += len(have.others)
			return nil
		})
		if err != nil {
			return fmt.Errorf("verify rule %s: %w", rule.ID, err)
		}
	}
	p.Listing, p.Done = false, true
	show(p)
	fmt.Fprintf(stderr, "verify: %d versions checked, %d missing, %d different, %d destination versions that are not replicas\n",
		p.Listed, missing, different, extra)
	if missing+different > 0 {
		return errSilent{exitFailure}
	}
	return nil
}

func orNull(v string) string {
	if v == "" {
		return "null"
	}
	return v
}
