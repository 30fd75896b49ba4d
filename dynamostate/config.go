package dynamostate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/s3replicad/s3replicad/engine"
)

// Config says which table to use and how this node takes part.
type Config struct {
	Table    string
	Region   string
	Endpoint string // optional: a DynamoDB-compatible endpoint
	// AccessKeyID and SecretAccessKey are optional; empty means the AWS
	// default credential chain.
	AccessKeyID     string
	SecretAccessKey string

	// NodeID is unique per process (DefaultNodeID makes one); Host is
	// what status shows beside it.
	NodeID string
	Host   string
	// Lease is how long a node that stops renewing keeps its shards
	// (default 20s).
	Lease time.Duration
	// Shards is the number of lease shards, fixed when the table is
	// initialised (CreateTable stores it; Open reads it from the table).
	// Default 32.
	Shards int
	// RequestTimeout bounds each request to the table (default 10s): a
	// table that stalls must not hold a worker for ever.
	RequestTimeout time.Duration

	Logger     *slog.Logger
	HTTPClient *http.Client // optional
}

// Defaults.
const (
	DefaultLease  = 20 * time.Second
	DefaultShards = 32
	// MaxShards bounds Shards: every node reads every lease item on every
	// renewal.
	MaxShards = 1024
)

// DefaultNodeID is host plus random: unique per process, so that a
// restarted node never mistakes its predecessor's leases for its own.
func DefaultNodeID(host string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	if host == "" {
		host, _ = os.Hostname()
	}
	return host + "-" + hex.EncodeToString(b)
}

func (c *Config) setDefaults() error {
	if c.Table == "" {
		return errors.New("dynamodb: no table configured")
	}
	if c.Region == "" {
		return fmt.Errorf("dynamodb table %q: no region configured", c.Table)
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.Lease < time.Second {
		return fmt.Errorf("dynamodb table %q: lease %s is shorter than a second", c.Table, c.Lease)
	}
	if c.Shards <= 0 {
		c.Shards = DefaultShards
	}
	if c.Shards > MaxShards {
		return fmt.Errorf("dynamodb table %q: %d shards, at most %d", c.Table, c.Shards, MaxShards)
	}
	if c.Host == "" {
		c.Host, _ = os.Hostname()
	}
	if c.NodeID == "" {
		c.NodeID = DefaultNodeID(c.Host)
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// client builds the DynamoDB client. The SDK's own retries are kept short:
// the lease loop has a deadline to meet, and the engine retries the rest.
func client(ctx context.Context, c *Config) (*dynamodb.Client, error) {
	var opts []func(*awsconfig.LoadOptions) error
	opts = append(opts, awsconfig.WithRegion(c.Region))
	if c.AccessKeyID != "" || c.SecretAccessKey != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, "")))
	}
	ac, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("dynamodb table %q: load AWS configuration: %w", c.Table, err)
	}
	return dynamodb.NewFromConfig(ac, func(o *dynamodb.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
		if c.HTTPClient != nil {
			o.HTTPClient = c.HTTPClient
		}
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 3
			so.MaxBackoff = time.Second
		})
	}), nil
}

// ErrLeaseLost is wrapped by a write for a shard this node does not hold,
// or whose item a newer lease holder has written since (the fence): the
// caller drops the op; its new owner runs it.
var ErrLeaseLost = errors.New("the shard's lease is held by another node")

// LeaseLost reports whether err means the write was for a shard this
// node does not hold (ErrLeaseLost): the engine, which cannot import this
// package, asks through this method.
func (s *Store) LeaseLost(err error) bool { return errors.Is(err, ErrLeaseLost) }

// IsTransient reports whether err is a failure of the table that may pass
// (throttling, a 5xx, the network): the caller retries later.
func IsTransient(err error) bool {
	var e *engine.Error
	return errors.As(err, &e) && e.Class == engine.Transient
}

// conditionFailed reports whether a conditional write was refused.
func conditionFailed(err error) bool {
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf)
}

// classify turns an SDK error into one the engine can act on: transient
// (throttling, 5xx, network, a request that timed out) or permanent (no
// such table, access denied, a request the table refuses), naming the
// table. ctx is the caller's: its own cancellation passes through as is.
func (s *Store) classify(ctx context.Context, what string, err error) error {
	return classify(ctx, s.cfg.Table, what, err)
}

func classify(ctx context.Context, table, what string, err error) error {
	if err == nil {
		return nil
	}
	if ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	wrap := func(c engine.Class, reason string, format string, args ...any) error {
		return &engine.Error{Class: c, Reason: reason, Err: fmt.Errorf(format, args...)}
	}
	var rnf *types.ResourceNotFoundException
	if errors.As(err, &rnf) {
		return wrap(engine.Permanent, engine.ReasonInvalid,
			"dynamodb table %q (or an index of it) does not exist; create it with `s3replicad cluster init`: %s: %w", table, what, err)
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		code := api.ErrorCode()
		switch {
		case code == "AccessDeniedException" || code == "UnrecognizedClientException" ||
			code == "InvalidSignatureException" || code == "MissingAuthenticationTokenException" ||
			code == "ExpiredTokenException":
			return wrap(engine.Permanent, engine.ReasonAccessDenied, "dynamodb table %q: %s: access denied: %w", table, what, err)
		case code == "ProvisionedThroughputExceededException" || code == "ThrottlingException" ||
			code == "RequestLimitExceeded" || strings.Contains(code, "Throttl"):
			return wrap(engine.Transient, engine.ReasonThrottled, "dynamodb table %q: %s: throttled: %w", table, what, err)
		case code == "InternalServerError" || code == "ServiceUnavailable" || code == "InternalFailure":
			return wrap(engine.Transient, engine.ReasonServerError, "dynamodb table %q: %s: %w", table, what, err)
		case code == "ValidationException" || code == "SerializationException" || code == "ItemCollectionSizeLimitExceededException":
			return wrap(engine.Permanent, engine.ReasonInvalid, "dynamodb table %q: %s: request refused: %w", table, what, err)
		}
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		switch code := re.HTTPStatusCode(); {
		case code >= 500 || code == 429:
			return wrap(engine.Transient, engine.ReasonServerError, "dynamodb table %q: %s: %w", table, what, err)
		case code == 403:
			return wrap(engine.Permanent, engine.ReasonAccessDenied, "dynamodb table %q: %s: access denied: %w", table, what, err)
		}
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || isConnError(err) {
		return wrap(engine.Transient, engine.ReasonNetwork, "dynamodb table %q: %s: %w", table, what, err)
	}
	// Unknown: transient, like the engine's own default, but named.
	return wrap(engine.Transient, engine.ReasonOther, "dynamodb table %q: %s: %w", table, what, err)
}

func isConnError(err error) bool {
	msg := err.Error()
	for _, s := range []string{"connection refused", "connection reset", "EOF", "broken pipe", "no such host", "timeout"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
