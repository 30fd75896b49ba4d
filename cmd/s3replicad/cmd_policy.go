package main

import (
	"context"
	"encoding/json"
	"io"
)

// cmdPolicy prints the least-privilege IAM policy of the source side: read
// the selected versions and their tags, list versions for backfill and
// verify, and consume the queue.
func cmdPolicy(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("policy", stderr)
	cfg, _, err := loadFor(fs, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	doc := cfg.Policy()
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
