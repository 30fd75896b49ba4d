package s3store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"syscall"
	"testing"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/s3replicad/s3replicad/awsclient"
	"github.com/s3replicad/s3replicad/engine"
)

// op wraps err as the SDK returns every error: in an OperationError.
func op(err error) error {
	return &smithy.OperationError{ServiceID: "S3", OperationName: "PutObject", Err: err}
}

// answered is an error carrying an HTTP answer, as the SDK builds it.
func answered(status int, code string, header ...string) error {
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	var inner error = &smithy.GenericAPIError{Code: code, Message: "m"}
	if code == "" {
		inner = errors.New("no body")
	}
	return op(&awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
		Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status, Header: h}},
		Err:      inner,
	}, RequestID: "R"})
}

func sent(err error) error { return op(&smithyhttp.RequestSendError{Err: err}) }

func TestEveryErrorShapeIsClassified(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &net.AddrError{Err: "connection refused"}}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	for _, c := range []struct {
		name   string
		err    error
		side   side
		class  engine.Class
		reason string
	}{
		// transport: no answer at all
		{"refused", sent(refused), onDestination, engine.Transient, engine.ReasonNetwork},
		{"reset", sent(reset), onDestination, engine.Transient, engine.ReasonNetwork},
		{"reset mid-body", op(fmt.Errorf("read body: %w", io.ErrUnexpectedEOF)), onSource, engine.Transient, engine.ReasonNetwork},
		{"stalled", sent(fmt.Errorf("no byte for 30s: %w", awsclient.ErrStalled)), onDestination, engine.Transient, engine.ReasonNetwork},
		{"deadline", op(context.DeadlineExceeded), onDestination, engine.Transient, engine.ReasonNetwork},
		{"tls unknown CA", sent(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), onDestination, engine.Transient, engine.ReasonNetwork},
		{"tls alert", sent(tls.AlertError(42)), onDestination, engine.Transient, engine.ReasonNetwork},
		{"dns", sent(&net.DNSError{Err: "no such host", Name: "s3.example", IsNotFound: true}), onDestination, engine.Transient, engine.ReasonNetwork},
		{"unreadable answer", op(&smithy.DeserializationError{Err: errors.New("bad xml")}), onDestination, engine.Transient, engine.ReasonNetwork},
		// response errors whose response is missing must not be dereferenced
		{"response error without response", op(&awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{Err: reset}}), onDestination, engine.Transient, engine.ReasonNetwork},
		{"response error without anything", op(&awshttp.ResponseError{}), onDestination, engine.Transient, engine.ReasonOther},
		{"smithy response error without response", op(&smithyhttp.ResponseError{Err: refused}), onDestination, engine.Transient, engine.ReasonNetwork},
		{"response without http response", op(&smithyhttp.ResponseError{Response: &smithyhttp.Response{}, Err: errors.New("x")}), onDestination, engine.Transient, engine.ReasonOther},
		// store answers
		{"SlowDown", answered(503, "SlowDown"), onDestination, engine.Transient, engine.ReasonThrottled},
		{"bare 503", answered(503, ""), onDestination, engine.Transient, engine.ReasonThrottled},
		{"429", answered(429, ""), onDestination, engine.Transient, engine.ReasonThrottled},
		{"500", answered(500, "InternalError"), onDestination, engine.Transient, engine.ReasonServerError},
		{"502 from a proxy", answered(502, ""), onDestination, engine.Transient, engine.ReasonServerError},
		{"AccessDenied", answered(403, "AccessDenied"), onDestination, engine.Permanent, engine.ReasonAccessDenied},
		{"NoSuchBucket", answered(404, "NoSuchBucket"), onSource, engine.Permanent, engine.ReasonNoSuchBucket},
		{"BadDigest", answered(400, "BadDigest"), onDestination, engine.Transient, engine.ReasonIntegrity},
		{"RequestTimeout", answered(400, "RequestTimeout"), onDestination, engine.Transient, engine.ReasonNetwork},
		{"InvalidArgument", answered(400, "InvalidArgument"), onDestination, engine.Permanent, engine.ReasonInvalid},
		// gone only on the source's own word
		{"NoSuchKey", answered(404, "NoSuchKey"), onSource, engine.Gone, engine.ReasonSourceMissing},
		{"NoSuchVersion", answered(404, "NoSuchVersion"), onSource, engine.Gone, engine.ReasonSourceMissing},
		{"delete marker", answered(405, "MethodNotAllowed", "X-Amz-Delete-Marker", "true"), onSource, engine.Gone, engine.ReasonSourceMissing},
		{"bare 404", answered(404, ""), onSource, engine.Permanent, engine.ReasonInvalid},
		{"404 from a proxy", answered(404, "NotFound"), onSource, engine.Permanent, engine.ReasonInvalid},
		{"405 without delete marker", answered(405, "MethodNotAllowed"), onSource, engine.Permanent, engine.ReasonInvalid},
		{"NoSuchKey on the destination", answered(404, "NoSuchKey"), onDestination, engine.Permanent, engine.ReasonInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := classify(c.err, c.side)
			class, reason := engine.Classify(err)
			if class != c.class || reason != c.reason {
				t.Fatalf("classified %v/%s, want %v/%s (%v)", class, reason, c.class, c.reason, err)
			}
			_ = err.Error() // printable, whatever it wraps
		})
	}
	if err := classify(op(context.Canceled), onSource); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancellation is left to the caller, got %v", err)
	}
	if classify(nil, onSource) != nil {
		t.Fatal("nil classified as an error")
	}
}

// FuzzClassify builds errors layer by layer as the transport, TLS, the
// SDK and the store would, in any order, and requires classify to give
// every one of them a class and a documented reason without panicking.
func FuzzClassify(f *testing.F) {
	f.Add([]byte{0, 1, 2})
	f.Add([]byte{5, 3, 0x94, 0x01})
	f.Add([]byte{7, 7, 7, 6})
	f.Add([]byte{4, 0xf7, 0x01, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		var err error = errors.New("root")
		for i := 0; i < len(b); i++ {
			arg := 0
			if i+1 < len(b) {
				arg = int(b[i+1])
			}
			switch b[i] % 10 {
			case 0:
				err = &net.OpError{Op: "read", Net: "tcp", Err: err}
			case 1:
				err = &smithyhttp.RequestSendError{Err: err}
			case 2:
				err = op(err)
			case 3:
				err = &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{Err: err}}
			case 4:
				status := 100 + arg*2
				i++
				err = &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
					Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status, Header: http.Header{}}}, Err: err}}
			case 5:
				codes := []string{"", "NoSuchKey", "SlowDown", "AccessDenied", "NoSuchBucket", "InternalError", "Weird"}
				err = &smithy.GenericAPIError{Code: codes[arg%len(codes)], Message: fmt.Sprint(err)}
				i++
			case 6:
				err = &tls.CertificateVerificationError{Err: err}
			case 7:
				err = fmt.Errorf("wrapped: %w", err)
			case 8:
				err = &smithyhttp.ResponseError{Err: err}
			case 9:
				err = &awshttp.ResponseError{}
			}
		}
		for _, s := range []side{onSource, onDestination} {
			got := classify(err, s)
			class, reason := engine.Classify(got)
			if class != engine.Transient && class != engine.Permanent && class != engine.Gone {
				t.Fatalf("class %v", class)
			}
			if !slices.Contains(engine.Reasons, reason) {
				t.Fatalf("reason %q is not documented", reason)
			}
			if class == engine.Gone && s != onSource {
				t.Fatal("only the source can say a version is gone")
			}
			_ = got.Error()
		}
	})
}
