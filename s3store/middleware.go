package s3store

import (
	"context"

	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// s3Check200 is the SDK's middleware that reads a 2xx response's body as
// XML, to catch an error sent after a 200 status.
const s3Check200 = "S3:ProcessResponseFor200Error"

// emptyBodyFirst lets a response that has no body at all (Content-Length:
// 0, as a PutObject's or UploadPart's success is) skip the SDK's 200-error
// check, which would build an XML decoder and a 4 KiB read buffer to find
// that out; the check's own answer there is the same (an empty body is a
// success). Every other response goes through the SDK's check as before.
type emptyBodyFirst struct {
	check middleware.DeserializeMiddleware
}

func (m *emptyBodyFirst) ID() string { return s3Check200 }

func (m *emptyBodyFirst) HandleDeserialize(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
	middleware.DeserializeOutput, middleware.Metadata, error,
) {
	out, md, err := next.HandleDeserialize(ctx, in)
	if err == nil {
		if resp, ok := out.RawResponse.(*smithyhttp.Response); ok && resp.ContentLength == 0 {
			return out, md, nil
		}
	}
	return m.check.HandleDeserialize(ctx, in, receivedAnswer{out, md, err})
}

// receivedAnswer hands the SDK's check the response already received.
type receivedAnswer struct {
	out middleware.DeserializeOutput
	md  middleware.Metadata
	err error
}

func (a receivedAnswer) HandleDeserialize(context.Context, middleware.DeserializeInput) (middleware.DeserializeOutput, middleware.Metadata, error) {
	return a.out, a.md, a.err
}

// skipEmpty200Check installs emptyBodyFirst in an operation's stack. Only
// for operations that have the check (PutObject and UploadPart do).
func skipEmpty200Check(st *middleware.Stack) error {
	w := &emptyBodyFirst{}
	check, err := st.Deserialize.Swap(s3Check200, w)
	if err != nil {
		return err
	}
	w.check = check
	return nil
}

// withoutInvocationID leaves out the SDK's amz-sdk-invocation-id header,
// a fresh random UUID per request that only the SDK's own telemetry reads
// (stores log their x-amz-request-id): making it, signing it and sending
// it was 3% of the SDK's work on a small object's GET or PUT.
func withoutInvocationID(st *middleware.Stack) error {
	_, _ = st.Build.Remove("ClientRequestID") // absent: nothing to leave out
	return nil
}
