package s3store

import (
	"context"
	"net/http"
	"sync"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithyauth "github.com/aws/smithy-go/auth"
	smithyendpoints "github.com/aws/smithy-go/endpoints"
)

// endpointCache remembers the SDK's endpoint resolutions. The SDK resolves
// the endpoint twice for every request (once to pick the auth scheme, once
// for the URL) by evaluating S3's whole rule set, although the answer
// depends only on the bucket and the client's settings: on a 64 KiB object
// that is a tenth of the SDK's work. The answer is still the SDK's own
// resolver's; it is computed once per bucket and copied out.
//
// The object key, prefix and copy source are parameters too, but S3's
// rules do not read them (TestEndpointIgnoresKey checks that on every SDK
// upgrade), so one entry serves every key of a bucket. Every other
// parameter is part of the entry's identity (TestEndpointKeyCoversParameters
// fails when the SDK adds one).
type endpointCache struct {
	next s3.EndpointResolverV2

	mu      sync.RWMutex
	entries map[endpointKey]smithyendpoints.Endpoint
}

// maxEndpoints bounds the cache: a daemon addresses a handful of buckets;
// past this, resolutions are simply not kept.
const maxEndpoints = 256

func newEndpointCache(next s3.EndpointResolverV2) *endpointCache {
	return &endpointCache{next: next, entries: map[endpointKey]smithyendpoints.Endpoint{}}
}

// optString and optBool keep "unset" apart from the zero value.
type optString struct {
	set bool
	v   string
}

type optBool uint8 // 0 unset, 1 false, 2 true

func str(p *string) optString {
	if p == nil {
		return optString{}
	}
	return optString{true, *p}
}

func boolOf(p *bool) optBool {
	switch {
	case p == nil:
		return 0
	case *p:
		return 2
	}
	return 1
}

// endpointKey is every EndpointParameters field the rules read.
type endpointKey struct {
	bucket, region, endpoint optString

	useFIPS, useDualStack, forcePathStyle, accelerate, useGlobalEndpoint,
	useObjectLambdaEndpoint, disableAccessPoints, disableMultiRegionAccessPoints,
	useArnRegion, useS3ExpressControlEndpoint, disableS3ExpressSessionAuth optBool
}

func keyOf(p s3.EndpointParameters) endpointKey {
	return endpointKey{
		bucket: str(p.Bucket), region: str(p.Region), endpoint: str(p.Endpoint),
		useFIPS: boolOf(p.UseFIPS), useDualStack: boolOf(p.UseDualStack), forcePathStyle: boolOf(p.ForcePathStyle),
		accelerate: boolOf(p.Accelerate), useGlobalEndpoint: boolOf(p.UseGlobalEndpoint),
		useObjectLambdaEndpoint: boolOf(p.UseObjectLambdaEndpoint), disableAccessPoints: boolOf(p.DisableAccessPoints),
		disableMultiRegionAccessPoints: boolOf(p.DisableMultiRegionAccessPoints), useArnRegion: boolOf(p.UseArnRegion),
		useS3ExpressControlEndpoint: boolOf(p.UseS3ExpressControlEndpoint), disableS3ExpressSessionAuth: boolOf(p.DisableS3ExpressSessionAuth),
	}
}

// ResolveEndpoint implements s3.EndpointResolverV2.
func (c *endpointCache) ResolveEndpoint(ctx context.Context, p s3.EndpointParameters) (smithyendpoints.Endpoint, error) {
	k := keyOf(p)
	c.mu.RLock()
	ep, ok := c.entries[k]
	c.mu.RUnlock()
	if ok {
		return copyEndpoint(ep), nil
	}
	ep, err := c.next.ResolveEndpoint(ctx, p)
	if err != nil {
		return ep, err // errors are not kept: they are rare and may pass
	}
	c.mu.Lock()
	if len(c.entries) < maxEndpoints {
		c.entries[k] = copyEndpoint(ep)
	}
	c.mu.Unlock()
	return copyEndpoint(ep), nil
}

// copyEndpoint returns an endpoint that shares nothing writable with ep:
// the SDK writes into the properties of the auth options it is given (it
// merges them with the operation's own), so each request gets its own.
func copyEndpoint(ep smithyendpoints.Endpoint) smithyendpoints.Endpoint {
	out := smithyendpoints.Endpoint{URI: ep.URI}
	if ep.URI.User != nil {
		u := *ep.URI.User
		out.URI.User = &u
	}
	if len(ep.Headers) > 0 {
		out.Headers = http.Header{}
		for k, v := range ep.Headers {
			out.Headers[k] = append([]string(nil), v...)
		}
	}
	out.Properties.SetAll(&ep.Properties)
	// Read from the copy: a Get on ep's own properties may write to them.
	if opts, ok := smithyauth.GetAuthOptions(&out.Properties); ok {
		cp := make([]*smithyauth.Option, len(opts))
		for i, o := range opts {
			n := &smithyauth.Option{SchemeID: o.SchemeID}
			n.IdentityProperties.SetAll(&o.IdentityProperties)
			n.SignerProperties.SetAll(&o.SignerProperties)
			cp[i] = n
		}
		smithyauth.SetAuthOptions(&out.Properties, cp)
	}
	return out
}
