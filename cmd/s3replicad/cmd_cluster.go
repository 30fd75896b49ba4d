package main

import (
	"context"
	"fmt"
	"io"

	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/dynamostate"
)

// cmdCluster is `s3replicad cluster init`: create the cluster's DynamoDB
// table (idempotent) and say what it created.
func cmdCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("cluster init", stderr)
	if len(args) > 0 && args[0] == "init" {
		args = args[1:]
	} else if n := len(args); n == 0 || args[n-1] != "init" {
		return &usageError{"usage: s3replicad cluster init [-config FILE]"}
	} else {
		args = args[:n-1]
	}
	cfg, log, err := loadFor(fs, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	if cfg.Cluster == nil {
		return &config.Error{File: cfg.File(), Problems: []string{"cluster: the configuration has no cluster section (cluster.dynamodb.table names the table to create)"}}
	}
	what, err := dynamostate.CreateTable(ctx, cfg.DynamoConfig(log))
	if err != nil {
		return fmt.Errorf("cluster init: %w", err)
	}
	fmt.Fprintln(stdout, what)
	return nil
}
