package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/s3replicad/s3replicad/awsclient"
	"github.com/s3replicad/s3replicad/engine"
)

// side says which end of the replication a request was made to: only the
// source can say that a version is gone.
type side int

const (
	onDestination side = iota
	onSource
)

// response is what an error tells of the HTTP answer, if there was one.
type response struct {
	status       int
	code         string
	deleteMarker bool // x-amz-delete-marker: true
}

// responseOf digs the status, S3 error code and delete-marker header out of
// any error the SDK returns. It never assumes a response exists: transport
// failures come without one.
func responseOf(err error) response {
	var r response
	var ae smithy.APIError
	if errors.As(err, &ae) && ae != nil {
		r.code = ae.ErrorCode()
	}
	var hr *smithyhttp.Response
	var are *awshttp.ResponseError
	var sre *smithyhttp.ResponseError
	switch {
	case errors.As(err, &are) && are != nil && are.ResponseError != nil && are.Response != nil:
		hr = are.Response
	case errors.As(err, &sre) && sre != nil && sre.Response != nil:
		hr = sre.Response
	}
	if hr != nil && hr.Response != nil {
		r.status = hr.StatusCode
		r.deleteMarker = hr.Header.Get("X-Amz-Delete-Marker") == "true"
	}
	return r
}

// classify maps any error from an S3 call to an engine.Error: transient
// (retried with backoff), permanent (failed until `retry`) or gone (the
// source says the version no longer exists: skipped). Cancellation is
// returned as it is, for the caller to handle.
func classify(err error, s side) (out error) {
	if err == nil {
		return nil
	}
	defer func() {
		// An error whose own methods panic (a response error built without
		// a response) is kept by its message only, so that nothing that
		// later inspects it can panic either.
		if r := recover(); r != nil {
			out = &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther,
				Err: fmt.Errorf("unreadable error %T: %v (%v)", err, err, r)}
		}
	}()
	if errors.Is(err, context.Canceled) {
		return err
	}
	r := responseOf(err)
	class, reason := classOf(err, r, s)
	if s == onSource && class == engine.Permanent && (r.status == http.StatusNotFound || r.status == http.StatusMethodNotAllowed) {
		err = fmt.Errorf("%w (a %d without S3's NoSuchKey or NoSuchVersion code, or a delete marker, is not the source saying the version is gone: check the endpoint, and that no proxy answers for it)", err, r.status)
	}
	return &engine.Error{Class: class, Reason: reason, Err: err}
}

func classOf(err error, r response, s side) (engine.Class, string) {
	switch r.code {
	case "NoSuchKey", "NoSuchVersion":
		if s == onSource {
			return engine.Gone, engine.ReasonSourceMissing
		}
		return engine.Permanent, engine.ReasonInvalid
	case "NoSuchBucket":
		return engine.Permanent, engine.ReasonNoSuchBucket
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem",
		"InvalidToken", "ExpiredToken", "TokenRefreshRequired":
		return engine.Permanent, engine.ReasonAccessDenied
	case "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
		"RequestThrottled", "ServiceUnavailable", "Busy":
		return engine.Transient, engine.ReasonThrottled
	case "RequestTimeout", "RequestTimeTooSkewed":
		return engine.Transient, engine.ReasonNetwork
	case "InternalError":
		return engine.Transient, engine.ReasonServerError
	case "BadDigest", "InvalidDigest", "IncompleteBody", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch":
		return engine.Transient, engine.ReasonIntegrity
	}
	switch st := r.status; {
	case st == 0:
		// No answer: refused, reset, timed out, stalled, TLS failure or a
		// deadline. The request may or may not have reached the store.
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || isTransport(err) {
			return engine.Transient, engine.ReasonNetwork
		}
		return engine.Transient, engine.ReasonOther
	case st == http.StatusNotFound && s == onSource:
		// Only the source's own NoSuchKey/NoSuchVersion means gone: a bare
		// 404 is a wrong endpoint or a proxy in the way.
		return engine.Permanent, engine.ReasonInvalid
	case st == http.StatusMethodNotAllowed && s == onSource && r.deleteMarker:
		// The version asked for is a delete marker.
		return engine.Gone, engine.ReasonSourceMissing
	case st == http.StatusForbidden || st == http.StatusUnauthorized:
		return engine.Permanent, engine.ReasonAccessDenied
	case st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable:
		return engine.Transient, engine.ReasonThrottled
	case st == http.StatusRequestTimeout:
		return engine.Transient, engine.ReasonNetwork
	case st >= 500:
		return engine.Transient, engine.ReasonServerError
	case st >= 400:
		// The request itself is wrong and will stay wrong.
		return engine.Permanent, engine.ReasonInvalid
	}
	// A 2xx or 3xx that still failed: an answer the SDK could not read.
	return engine.Transient, engine.ReasonOther
}

// isTransport tells errors raised before or instead of an HTTP answer.
func isTransport(err error) bool {
	var (
		ne  net.Error
		se  *smithyhttp.RequestSendError
		sde *smithy.DeserializationError
	)
	return errors.As(err, &ne) || errors.As(err, &se) || errors.As(err, &sde) || errors.Is(err, awsclient.ErrStalled)
}

// isCode reports whether err carries the S3 error code.
func isCode(err error, code string) bool { return responseOf(err).code == code }

// statusOf returns the HTTP status of err's answer, 0 when there was none.
func statusOf(err error) int { return responseOf(err).status }
