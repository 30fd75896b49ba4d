// Package awsclient is what the AWS adapters (S3 and SQS) share: the SDK
// configuration, the HTTP client with its deadlines, and a short reading
// of an SDK error for people.
package awsclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Config loads the SDK configuration for region and optional static
// credentials (the default chain otherwise).
func Config(ctx context.Context, region, key, secret, token string) (aws.Config, error) {
	opts := []func(*config.LoadOptions) error{config.WithRegion(region)}
	if key != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(key, secret, token)))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS configuration: %w", err)
	}
	return cfg, nil
}

// StaticUserAgent replaces the SDK's User-Agent middleware with one that
// sets a fixed header.
func StaticUserAgent(ua string) func(*middleware.Stack) error {
	return func(st *middleware.Stack) error {
		if _, err := st.Build.Remove("UserAgent"); err != nil {
			return nil // not there: leave the stack alone
		}
		return st.Build.Add(middleware.BuildMiddlewareFunc("s3replicad:UserAgent",
			func(ctx context.Context, in middleware.BuildInput, next middleware.BuildHandler) (middleware.BuildOutput, middleware.Metadata, error) {
				if req, ok := in.Request.(*smithyhttp.Request); ok {
					req.Header.Set("User-Agent", ua)
				}
				return next.HandleBuild(ctx, in)
			}), middleware.After)
	}
}

// Describe says in a few words what went wrong with a request to S3 or
// SQS, and what to fix where that is known (check-config prints it).
func Describe(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchBucket":
			return "does not exist"
		case "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist":
			return "queue does not exist"
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "UnrecognizedClientException":
			return "credentials were rejected (" + ae.ErrorCode() + "): check access_key_id and secret_access_key"
		case "AccessDenied", "AccessDeniedException":
			return "access denied: the credentials lack permission (see `s3replicad policy`)"
		}
		if msg := ae.ErrorMessage(); msg != "" {
			return ae.ErrorCode() + ": " + msg
		}
		return ae.ErrorCode()
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return "cannot connect: " + oe.Err.Error()
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && len(msg) > 200 {
		msg = msg[i+2:]
	}
	return msg
}
