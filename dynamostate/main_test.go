package dynamostate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// dynamo is the dynalite server every test of the package shares; each
// test makes its own table.
var dynamo *testenv.Dynamo

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "s3replicad-dynamo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	dynamo, err = testenv.StartDynamo(dir)
	if err != nil {
		if errors.Is(err, testenv.ErrNotInstalled) && os.Getenv("CI") != "true" {
			fmt.Fprintln(os.Stderr, "SKIP dynamostate:", err)
			return 0
		}
		fmt.Fprintln(os.Stderr, "dynamostate: cannot start dynalite:", err)
		return 1
	}
	defer dynamo.Close()
	code := m.Run()
	if code != 0 {
		// The server's own account of a failed run.
		if log, err := os.ReadFile(filepath.Join(dir, "dynalite.log")); err == nil && len(log) > 0 {
			fmt.Fprintf(os.Stderr, "--- dynalite.log (last 4 KB):\n%s\n", log[max(0, len(log)-4096):])
		}
	}
	return code
}

var tableSeq atomic.Int64

// testConfig is a configuration for a new table on the shared server,
// with a short lease so that takeovers happen within seconds.
func testConfig(t testing.TB, shards int) dynamostate.Config {
	t.Helper()
	return dynamostate.Config{
		Table:    fmt.Sprintf("s3replicad-test-%d-%d", time.Now().UnixNano()%1e6, tableSeq.Add(1)),
		Region:   testenv.Region,
		Endpoint: dynamo.Endpoint, AccessKeyID: testenv.AccessKey, SecretAccessKey: testenv.SecretKey,
		Lease: 3 * time.Second, Shards: shards, RequestTimeout: 2 * time.Second,
		Logger: testLogger(t),
	}
}

// newTable creates a table and returns its configuration.
func newTable(t testing.TB, shards int) dynamostate.Config {
	t.Helper()
	cfg := testConfig(t, shards)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := dynamostate.CreateTable(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}
