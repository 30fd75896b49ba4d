// Package s3store adapts an S3 (or S3-compatible) endpoint to the engine's
// Source and Destination interfaces, and classifies the endpoint's errors
// as transient, permanent or gone at this boundary.
package s3store

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/s3replicad/s3replicad/awsclient"
	"github.com/s3replicad/s3replicad/engine"
)

// Checksum modes for requests and responses.
const (
	ChecksumAuto          = ""               // when_required for custom endpoints, SDK default on AWS
	ChecksumWhenRequired  = "when_required"  // what most S3-compatible stores accept
	ChecksumWhenSupported = "when_supported" // the SDK's default on AWS
)

// How each PUT and part proves its bytes to the store.
const (
	// IntegrityCRC32C sends x-amz-checksum-crc32c, computed in hardware:
	// verified by AWS and most current S3-compatible stores.
	IntegrityCRC32C = "crc32c"
	// IntegrityMD5 sends Content-MD5, which every S3 store verifies, at
	// about a CPU second per GiB.
	IntegrityMD5 = "md5"
)

// Config describes one endpoint.
type Config struct {
	Endpoint        string // empty: AWS
	Region          string
	PathStyle       bool
	AccessKeyID     string // empty: the default credential chain
	SecretAccessKey string
	SessionToken    string
	CAFile          string
	Checksums       string
	Integrity       string // IntegrityCRC32C (default) or IntegrityMD5
	// MaxConns bounds idle connections kept per host.
	MaxConns int
	// ListPageSize is the most versions asked for per ListObjectVersions
	// page (0: 1000, S3's most); tests make it small to cross pages.
	ListPageSize int32
	// StallTimeout abandons a request with no byte sent or received for
	// this long (0: awsclient.DefaultStallTimeout).
	StallTimeout time.Duration
	// UserAgent, when set, is sent instead of the SDK's, which is rebuilt
	// for every request at a cost noticeable on small objects.
	UserAgent string
	// Logger receives the SDK's warnings; its debug lines (one per GET of
	// an object without a checksum, on AWS) are dropped.
	Logger *slog.Logger
	// HTTPClient replaces the client built from CAFile, MaxConns and
	// StallTimeout (tests use it).
	HTTPClient interface {
		Do(*http.Request) (*http.Response, error)
	}
}

// Store is one S3 endpoint. Every request goes through the SDK's client;
// none is retried there: the engine retries, once, in one place, and looks
// for the replica of a write that may have landed before writing again.
type Store struct {
	client    *s3.Client
	endpoint  string
	region    string
	integrity string
	pageSize  int32
	log       *slog.Logger
	// noPartChecksums is set once the store has refused a multipart
	// upload with a checksum algorithm.
	noPartChecksums atomic.Bool
}

var (
	_ engine.ObjectStore      = (*Store)(nil)
	_ engine.ServerSideCopier = (*Store)(nil)
)

// New builds a Store.
func New(ctx context.Context, c Config) (*Store, error) {
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	awsCfg, err := awsclient.Config(ctx, c.Region, c.AccessKeyID, c.SecretAccessKey, c.SessionToken)
	if err != nil {
		return nil, err
	}
	var hc interface {
		Do(*http.Request) (*http.Response, error)
	} = c.HTTPClient
	if hc == nil {
		if hc, err = awsclient.NewHTTPClient(awsclient.TransportConfig{CAFile: c.CAFile, MaxConns: c.MaxConns, StallTimeout: c.StallTimeout}); err != nil {
			return nil, err
		}
	}
	mode := c.Checksums
	if mode == ChecksumAuto && c.Endpoint != "" {
		mode = ChecksumWhenRequired
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		// Set here, not through config.WithHTTPClient, so that an
		// AWS_CA_BUNDLE in the environment does not break loading.
		o.HTTPClient = hc
		o.Logger = sdkLogger(c.Logger)
		o.UsePathStyle = c.PathStyle
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
		o.EndpointResolverV2 = newEndpointCache(o.EndpointResolverV2)
		if mode == ChecksumWhenRequired {
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
		// One retry layer, the engine's: a write retried down here could
		// land twice, and throttling retried here would hide from the
		// adaptive concurrency that backs off from it.
		o.Retryer = aws.NopRetryer{}
		// No "Expect: 100-continue" before large bodies: it costs a round
		// trip per part, and the daemon's requests are signed and sized, so
		// a refusal is rare and cheap to resend from the part buffer.
		o.ContinueHeaderThresholdBytes = -1
		if c.UserAgent != "" {
			o.APIOptions = append(o.APIOptions, awsclient.StaticUserAgent(c.UserAgent))
		}
		o.APIOptions = append(o.APIOptions, withoutInvocationID)
	})
	if c.Integrity == "" {
		c.Integrity = IntegrityCRC32C
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if c.ListPageSize <= 0 {
		c.ListPageSize = 1000
	}
	return &Store{client: client, endpoint: c.Endpoint, region: c.Region, integrity: c.Integrity, pageSize: c.ListPageSize, log: log}, nil
}

// sdkLogger forwards the SDK's warnings to log and drops the rest.
func sdkLogger(log *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
		if c == logging.Warn && log != nil {
			log.Warn(fmt.Sprintf(format, v...), "from", "aws-sdk")
		}
	})
}

// Get implements engine.Source.
func (s *Store) Get(ctx context.Context, v engine.VersionRef, r *engine.ByteRange) (*engine.Object, error) {
	in := &s3.GetObjectInput{Bucket: &v.Bucket, Key: &v.Key, VersionId: optional(v.VersionID), IfMatch: optional(quoteETag(v.IfMatch))}
	if r != nil {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", r.First, r.Last))
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil && r != nil && r.First == 0 && isCode(err, "InvalidRange") {
		// An empty object has no byte 0: read all of it.
		return s.Get(ctx, v, nil)
	}
	if err != nil {
		return nil, classifyRead(err)
	}
	obj := &engine.Object{
		ObjectMeta: engine.ObjectMeta{
			ContentType:        aws.ToString(out.ContentType),
			ContentEncoding:    aws.ToString(out.ContentEncoding),
			ContentDisposition: aws.ToString(out.ContentDisposition),
			ContentLanguage:    aws.ToString(out.ContentLanguage),
			CacheControl:       aws.ToString(out.CacheControl),
			Expires:            aws.ToString(out.ExpiresString),
			Metadata:           out.Metadata,
		},
		Size:         aws.ToInt64(out.ContentLength),
		ETag:         strings.Trim(aws.ToString(out.ETag), `"`),
		TagCount:     int(aws.ToInt32(out.TagCount)),
		VersionID:    aws.ToString(out.VersionId),
		LastModified: aws.ToTime(out.LastModified),
		Body:         out.Body,
	}
	if r != nil {
		total, ok := totalFromContentRange(aws.ToString(out.ContentRange))
		if !ok {
			obj.Body.Close()
			return nil, &engine.Error{Class: engine.Transient, Reason: engine.ReasonInvalid,
				Err: fmt.Errorf("ranged GET of %s answered without a usable Content-Range (%q)", v.Key, aws.ToString(out.ContentRange))}
		}
		obj.Size = total
	}
	return obj, nil
}

func totalFromContentRange(cr string) (int64, bool) {
	i := strings.LastIndexByte(cr, '/')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(cr[i+1:], 10, 64)
	return n, err == nil
}

// classifyRead classifies a GetObject error; a failed If-Match is the
// source's null version written over.
func classifyRead(err error) error {
	if changed(err) {
		return &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther, Err: fmt.Errorf("%w: %w", engine.ErrChanged, err)}
	}
	return classify(err, onSource)
}

func changed(err error) bool {
	return isCode(err, "PreconditionFailed") || statusOf(err) == http.StatusPreconditionFailed
}

// quoteETag renders an ETag for If-Match headers.
func quoteETag(etag string) string {
	if etag == "" || strings.HasPrefix(etag, `"`) {
		return etag
	}
	return `"` + etag + `"`
}

// Tags implements engine.Source.
func (s *Store) Tags(ctx context.Context, bucket, key, versionID string) (map[string]string, error) {
	out, err := s.client.GetObjectTagging(ctx, &s3.GetObjectTaggingInput{Bucket: &bucket, Key: &key, VersionId: optional(versionID)})
	if err != nil {
		return nil, classify(err, onSource)
	}
	tags := make(map[string]string, len(out.TagSet))
	for _, t := range out.TagSet {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return tags, nil
}

// ListVersions implements engine.Source: one page, versions and delete
// markers merged in S3's order (key ascending, newest first).
func (s *Store) ListVersions(ctx context.Context, bucket, prefix, keyMarker, versionMarker string) (engine.VersionPage, error) {
	var raw []byte
	out, err := s.client.ListObjectVersions(ctx, &s3.ListObjectVersionsInput{
		Bucket: &bucket, Prefix: optional(prefix), KeyMarker: optional(keyMarker), VersionIdMarker: optional(versionMarker),
		MaxKeys: aws.Int32(s.pageSize),
	}, keepBody(&raw))
	if err != nil {
		return engine.VersionPage{}, classify(err, onDestination)
	}
	page := engine.VersionPage{
		NextKeyMarker:       aws.ToString(out.NextKeyMarker),
		NextVersionIDMarker: aws.ToString(out.NextVersionIdMarker),
		Truncated:           aws.ToBool(out.IsTruncated),
	}
	// S3 lists what comes after the markers: after the version marker, or
	// after the whole key when there is none. versitygw (1.8.0) includes
	// the key marker's versions, and starts the next page with the version
	// the markers name when it is a key's latest. A walker must not see
	// them twice.
	repeated := func(key, id *string) bool {
		return keyMarker != "" && aws.ToString(key) == keyMarker && (versionMarker == "" || aws.ToString(id) == versionMarker)
	}
	for _, v := range out.Versions {
		if repeated(v.Key, v.VersionId) {
			continue
		}
		page.Versions = append(page.Versions, engine.Version{
			Key: aws.ToString(v.Key), VersionID: versionOrEmpty(v.VersionId), ETag: strings.Trim(aws.ToString(v.ETag), `"`),
			Size: aws.ToInt64(v.Size), IsLatest: aws.ToBool(v.IsLatest), LastModified: aws.ToTime(v.LastModified),
		})
	}
	for _, d := range out.DeleteMarkers {
		if repeated(d.Key, d.VersionId) {
			continue
		}
		page.Versions = append(page.Versions, engine.Version{
			Key: aws.ToString(d.Key), VersionID: versionOrEmpty(d.VersionId), IsLatest: aws.ToBool(d.IsLatest),
			DeleteMarker: true, LastModified: aws.ToTime(d.LastModified),
		})
	}
	if len(out.DeleteMarkers) > 0 {
		// The SDK hands versions and delete markers over as two lists;
		// the answer interleaves them in order. Times cannot merge them:
		// S3 gives whole seconds, MinIO milliseconds, and two writes can
		// share one.
		place := listedOrder(raw)
		sort.SliceStable(page.Versions, func(i, j int) bool {
			a, b := page.Versions[i], page.Versions[j]
			if a.Key != b.Key {
				return a.Key < b.Key
			}
			if a.IsLatest != b.IsLatest {
				return a.IsLatest
			}
			pa, okA := place[[2]string{a.Key, a.VersionID}]
			pb, okB := place[[2]string{b.Key, b.VersionID}]
			if okA && okB {
				return pa < pb
			}
			return a.LastModified.After(b.LastModified)
		})
	}
	return page, nil
}

// keepBody keeps a successful answer's body in *dst, for reading beside
// the SDK's own decoding of it.
func keepBody(dst *[]byte) func(*s3.Options) {
	return s3.WithAPIOptions(func(st *middleware.Stack) error {
		// Last in the deserialize step: next to the transport, before the
		// SDK's decoder reads the body.
		return st.Deserialize.Add(middleware.DeserializeMiddlewareFunc("s3replicad:keepBody",
			func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (middleware.DeserializeOutput, middleware.Metadata, error) {
				out, md, err := next.HandleDeserialize(ctx, in)
				resp, ok := out.RawResponse.(*smithyhttp.Response)
				if err != nil || !ok || resp.StatusCode != http.StatusOK {
					return out, md, err
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					return out, md, err
				}
				*dst = b
				resp.Body = io.NopCloser(bytes.NewReader(b))
				return out, md, nil
			}), middleware.After)
	})
}

// listedOrder returns the place of each Version and DeleteMarker entry
// (by key and version id, "" for null) in a ListObjectVersions answer.
func listedOrder(body []byte) map[[2]string]int {
	place := map[[2]string]int{}
	dec := xml.NewDecoder(bytes.NewReader(body))
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return place
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 1 && (t.Name.Local == "Version" || t.Name.Local == "DeleteMarker") {
				var e struct{ Key, VersionId string }
				if dec.DecodeElement(&e, &t) != nil {
					return place
				}
				place[[2]string{e.Key, versionOrEmpty(&e.VersionId)}] = len(place)
				continue
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
}

func versionOrEmpty(v *string) string {
	if s := aws.ToString(v); s != "null" {
		return s
	}
	return ""
}

// bodyWrite is what PutObject and UploadPart change in the SDK's stack.
// The payload is signed as unsigned: the headers, the integrity header
// among them, are signed, but hashing every byte with SHA-256 as well would
// double the CPU spent per byte (and the store's, which would check it).
// And their empty success answer skips the XML decoder of the 200-error
// check (see emptyBodyFirst).
var bodyWrite = s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware, skipEmpty200Check)

// integrityOf returns the Content-MD5 or x-amz-checksum-crc32c value for a
// payload; its CRC32C was computed as it was read.
func (s *Store) integrityOf(body engine.Payload) (contentMD5, crc32c *string) {
	if s.integrity == IntegrityMD5 {
		sum := md5.Sum(body.Data)
		return aws.String(base64.StdEncoding.EncodeToString(sum[:])), nil
	}
	return nil, aws.String(engine.CRC32CBase64(body.CRC32C))
}

// Put implements engine.Destination.
func (s *Store) Put(ctx context.Context, bucket, key string, meta engine.ObjectMeta, body engine.Payload) (string, error) {
	in := &s3.PutObjectInput{
		Bucket: &bucket, Key: &key,
		Body:          bytes.NewReader(body.Data),
		ContentLength: aws.Int64(int64(len(body.Data))),
	}
	in.ContentMD5, in.ChecksumCRC32C = s.integrityOf(body)
	applyPut(in, meta)
	out, err := s.client.PutObject(ctx, in, bodyWrite)
	if err != nil {
		return "", classify(err, onDestination)
	}
	return aws.ToString(out.VersionId), nil
}

func applyPut(in *s3.PutObjectInput, m engine.ObjectMeta) {
	in.ContentType = optional(m.ContentType)
	in.ContentEncoding = optional(m.ContentEncoding)
	in.ContentDisposition = optional(m.ContentDisposition)
	in.ContentLanguage = optional(m.ContentLanguage)
	in.CacheControl = optional(m.CacheControl)
	in.Expires = parseExpires(m.Expires)
	in.Metadata = m.Metadata
	in.Tagging = encodeTags(m.Tags)
	if m.StorageClass != "" {
		in.StorageClass = types.StorageClass(m.StorageClass)
	}
}

func parseExpires(v string) *time.Time {
	if v == "" {
		return nil
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return nil
	}
	return &t
}

func encodeTags(tags map[string]string) *string {
	if len(tags) == 0 {
		return nil
	}
	q := url.Values{}
	for k, v := range tags {
		q.Set(k, v)
	}
	return aws.String(q.Encode())
}

// copySource renders x-amz-copy-source: bucket/key?versionId=v, with
// everything but unreserved characters and the slashes percent-encoded
// (stores disagree on what else, such as '+', means).
func copySource(src engine.VersionRef) *string {
	var b strings.Builder
	for _, part := range []string{src.Bucket, "/", src.Key} {
		if part == "/" {
			b.WriteByte('/')
			continue
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~/", c) >= 0 {
				b.WriteByte(c)
			} else {
				fmt.Fprintf(&b, "%%%02X", c)
			}
		}
	}
	if src.VersionID != "" {
		b.WriteString("?versionId=" + url.QueryEscape(src.VersionID))
	}
	return aws.String(b.String())
}

// classifyCopy classifies a server-side copy error: the source's absence
// means it is gone, and a store that cannot copy says so for good.
func classifyCopy(err error) error {
	if changed(err) {
		return &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther, Err: fmt.Errorf("%w: %w", engine.ErrChanged, err)}
	}
	if isCode(err, "NotImplemented") || statusOf(err) == http.StatusNotImplemented {
		return &engine.Error{Class: engine.Permanent, Reason: engine.ReasonInvalid, Err: fmt.Errorf("%w: %w", engine.ErrCopyUnsupported, err)}
	}
	if isCode(err, "NoSuchBucket") {
		return classify(err, onDestination)
	}
	return classify(err, onSource)
}

// Copy implements engine.ServerSideCopier: CopyObject with the replica's
// headers, metadata and tags replacing the source's.
func (s *Store) Copy(ctx context.Context, src engine.VersionRef, bucket, key string, meta engine.ObjectMeta) (string, error) {
	var p s3.PutObjectInput
	applyPut(&p, meta)
	in := &s3.CopyObjectInput{
		Bucket: &bucket, Key: &key, CopySource: copySource(src), CopySourceIfMatch: optional(quoteETag(src.IfMatch)),
		MetadataDirective: types.MetadataDirectiveReplace, TaggingDirective: types.TaggingDirectiveReplace,
		ContentType: p.ContentType, ContentEncoding: p.ContentEncoding, ContentDisposition: p.ContentDisposition,
		ContentLanguage: p.ContentLanguage, CacheControl: p.CacheControl, Expires: p.Expires,
		Metadata: p.Metadata, Tagging: p.Tagging, StorageClass: p.StorageClass,
	}
	out, err := s.client.CopyObject(ctx, in)
	if err != nil {
		return "", classifyCopy(err)
	}
	return aws.ToString(out.VersionId), nil
}

// CopyPart implements engine.ServerSideCopier with UploadPartCopy.
func (s *Store) CopyPart(ctx context.Context, src engine.VersionRef, r engine.ByteRange, bucket, key, uploadID string, n int32) (string, error) {
	out, err := s.client.UploadPartCopy(ctx, &s3.UploadPartCopyInput{
		Bucket: &bucket, Key: &key, UploadId: &uploadID, PartNumber: aws.Int32(n),
		CopySource: copySource(src), CopySourceIfMatch: optional(quoteETag(src.IfMatch)), CopySourceRange: aws.String(fmt.Sprintf("bytes=%d-%d", r.First, r.Last)),
	})
	if err != nil {
		return "", classifyCopy(err)
	}
	if out.CopyPartResult == nil {
		return "", &engine.Error{Class: engine.Transient, Reason: engine.ReasonInvalid, Err: errors.New("UploadPartCopy answered without a result")}
	}
	return strings.Trim(aws.ToString(out.CopyPartResult.ETag), `"`), nil
}

// CreateMultipart implements engine.Destination.
// With partChecksums, and crc32c integrity, the upload is created with the
// CRC32C algorithm: the store then checks and keeps each part's CRC32C
// instead of computing a default checksum of its own over every byte, and
// the replica gets a checksum. A store that refuses the algorithm is asked
// again without it, and never again; one that ignores it does not echo it,
// and the upload is treated as created without.
func (s *Store) CreateMultipart(ctx context.Context, bucket, key string, meta engine.ObjectMeta, partChecksums bool) (string, string, error) {
	var p s3.PutObjectInput
	applyPut(&p, meta)
	in := &s3.CreateMultipartUploadInput{
		Bucket: &bucket, Key: &key,
		ContentType: p.ContentType, ContentEncoding: p.ContentEncoding, ContentDisposition: p.ContentDisposition,
		ContentLanguage: p.ContentLanguage, CacheControl: p.CacheControl, Expires: p.Expires,
		Metadata: p.Metadata, Tagging: p.Tagging, StorageClass: p.StorageClass,
	}
	declare := partChecksums && s.integrity == IntegrityCRC32C && !s.noPartChecksums.Load()
	if declare {
		in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32c
	}
	out, err := s.client.CreateMultipartUpload(ctx, in)
	if err != nil && declare && refusesChecksum(err) {
		s.noPartChecksums.Store(true)
		s.log.Warn("the store refuses multipart uploads with a CRC32C checksum; creating them without", "err", err)
		in.ChecksumAlgorithm = ""
		out, err = s.client.CreateMultipartUpload(ctx, in)
	}
	if err != nil {
		return "", "", classify(err, onDestination)
	}
	algo := ""
	if in.ChecksumAlgorithm != "" && strings.EqualFold(string(out.ChecksumAlgorithm), string(in.ChecksumAlgorithm)) {
		algo = string(types.ChecksumAlgorithmCrc32c)
	}
	return aws.ToString(out.UploadId), algo, nil
}

// refusesChecksum reports whether a CreateMultipartUpload error is the
// store rejecting the checksum algorithm rather than anything else.
func refusesChecksum(err error) bool {
	switch statusOf(err) {
	case http.StatusBadRequest, http.StatusNotImplemented:
		return true
	}
	return false
}

// UploadPart implements engine.Destination; the integrity header makes
// the store check the part's bytes.
func (s *Store) UploadPart(ctx context.Context, bucket, key, uploadID string, n int32, body engine.Payload) (string, error) {
	in := &s3.UploadPartInput{
		Bucket: &bucket, Key: &key, UploadId: &uploadID, PartNumber: aws.Int32(n),
		Body: bytes.NewReader(body.Data), ContentLength: aws.Int64(int64(len(body.Data))),
	}
	in.ContentMD5, in.ChecksumCRC32C = s.integrityOf(body)
	out, err := s.client.UploadPart(ctx, in, bodyWrite)
	if err != nil {
		return "", classify(err, onDestination)
	}
	return strings.Trim(aws.ToString(out.ETag), `"`), nil
}

// ListParts implements engine.Destination.
func (s *Store) ListParts(ctx context.Context, bucket, key, uploadID string) ([]engine.Part, error) {
	var parts []engine.Part
	p := s3.NewListPartsPaginator(s.client, &s3.ListPartsInput{Bucket: &bucket, Key: &key, UploadId: &uploadID})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return nil, classify(err, onDestination)
		}
		for _, pt := range out.Parts {
			parts = append(parts, engine.Part{Number: aws.ToInt32(pt.PartNumber), ETag: strings.Trim(aws.ToString(pt.ETag), `"`), Size: aws.ToInt64(pt.Size)})
		}
	}
	return parts, nil
}

// CompleteMultipart implements engine.Destination.
func (s *Store) CompleteMultipart(ctx context.Context, bucket, key, uploadID string, parts []engine.Part) (string, error) {
	cp := make([]types.CompletedPart, len(parts))
	for i, p := range parts {
		cp[i] = types.CompletedPart{PartNumber: aws.Int32(p.Number), ETag: aws.String(`"` + p.ETag + `"`)}
		if p.CRC32C != "" {
			cp[i].ChecksumCRC32C = aws.String(p.CRC32C)
		}
	}
	out, err := s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &bucket, Key: &key, UploadId: &uploadID, MultipartUpload: &types.CompletedMultipartUpload{Parts: cp},
	})
	if err != nil {
		return "", classify(err, onDestination)
	}
	return aws.ToString(out.VersionId), nil
}

// AbortMultipart implements engine.Destination.
func (s *Store) AbortMultipart(ctx context.Context, bucket, key, uploadID string) error {
	_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: &uploadID})
	return classify(err, onDestination)
}

// PutDeleteMarker implements engine.Destination: a DELETE without a version
// id, which on a versioned bucket only adds a delete marker.
func (s *Store) PutDeleteMarker(ctx context.Context, bucket, key string) (string, error) {
	out, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return "", classify(err, onDestination)
	}
	return aws.ToString(out.VersionId), nil
}

// clockSlack allows for the destination's clock being behind ours.
const clockSlack = 5 * time.Minute

// FindReplica implements engine.Destination.
func (s *Store) FindReplica(ctx context.Context, bucket, key string, a engine.Action, of engine.ReplicaOf, since time.Time) (string, bool, error) {
	after := since.Add(-clockSlack)
	var keyMarker, versionMarker string
	for {
		page, err := s.ListVersions(ctx, bucket, key, keyMarker, versionMarker)
		if err != nil {
			return "", false, err
		}
		for _, v := range page.Versions {
			if v.Key != key {
				if v.Key > key {
					return "", false, nil
				}
				continue
			}
			if v.LastModified.Before(after) || of.After != 0 && engine.VersionDigest(v.VersionID) == of.After {
				return "", false, nil // newest first: the rest are earlier writes'
			}
			if a == engine.ActionDeleteMarker {
				// Writes to a key are made one at a time, in order: a delete
				// marker of ours would be its newest version.
				return v.VersionID, v.DeleteMarker, nil
			}
			if v.DeleteMarker || !of.Candidate(v) {
				continue
			}
			head, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: &key, VersionId: optional(v.VersionID)})
			if err != nil {
				return "", false, classify(err, onDestination)
			}
			if of.Matches(head.Metadata) {
				return v.VersionID, true, nil
			}
		}
		if !page.Truncated {
			return "", false, nil
		}
		keyMarker, versionMarker = page.NextKeyMarker, page.NextVersionIDMarker
	}
}

// Current implements engine.Destination: the first entry of the key's
// version listing is its current version.
func (s *Store) Current(ctx context.Context, bucket, key string) (engine.Version, bool, error) {
	var keyMarker, versionMarker string
	for {
		page, err := s.ListVersions(ctx, bucket, key, keyMarker, versionMarker)
		if err != nil {
			return engine.Version{}, false, err
		}
		for _, v := range page.Versions {
			if v.Key == key {
				return v, true, nil
			}
			if v.Key > key {
				return engine.Version{}, false, nil
			}
		}
		if !page.Truncated {
			return engine.Version{}, false, nil
		}
		keyMarker, versionMarker = page.NextKeyMarker, page.NextVersionIDMarker
	}
}

// maxCopySize is the largest object CopyObject copies in one request.
const maxCopySize = 5 << 30

// CopyVersion implements engine.Destination: CopyObject of the version onto
// its own key, with its headers, metadata and tags;
// beyond CopyObject's 5 GiB, a multipart upload of UploadPartCopy parts
// with the version's headers, metadata and tags read first.
func (s *Store) CopyVersion(ctx context.Context, bucket, key, versionID string) (string, error) {
	src := engine.VersionRef{Bucket: bucket, Key: key, VersionID: versionID}
	head, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: &key, VersionId: optional(versionID)})
	if err != nil {
		return "", classify(err, onDestination)
	}
	if size := aws.ToInt64(head.ContentLength); size > maxCopySize {
		return s.copyLarge(ctx, src, head)
	}
	// The headers and metadata are given again (REPLACE) rather than
	// copied: MinIO's COPY drops Expires. Tags are copied.
	out, err := s.client.CopyObject(ctx, &s3.CopyObjectInput{
		Bucket: &bucket, Key: &key, CopySource: copySource(src),
		MetadataDirective: types.MetadataDirectiveReplace, TaggingDirective: types.TaggingDirectiveCopy,
		ContentType: head.ContentType, ContentEncoding: head.ContentEncoding, ContentDisposition: head.ContentDisposition,
		ContentLanguage: head.ContentLanguage, CacheControl: head.CacheControl, Expires: parseExpires(aws.ToString(head.ExpiresString)),
		Metadata: head.Metadata, StorageClass: head.StorageClass,
	})
	if err != nil {
		return "", classify(err, onDestination)
	}
	return aws.ToString(out.VersionId), nil
}

// copyLarge copies a version larger than CopyObject takes onto its own key
// in parts.
func (s *Store) copyLarge(ctx context.Context, src engine.VersionRef, head *s3.HeadObjectOutput) (string, error) {
	meta := engine.ObjectMeta{
		ContentType: aws.ToString(head.ContentType), ContentEncoding: aws.ToString(head.ContentEncoding),
		ContentDisposition: aws.ToString(head.ContentDisposition), ContentLanguage: aws.ToString(head.ContentLanguage),
		CacheControl: aws.ToString(head.CacheControl), Expires: aws.ToString(head.ExpiresString),
		Metadata: head.Metadata, StorageClass: string(head.StorageClass),
	}
	if aws.ToInt32(head.TagCount) > 0 {
		tags, err := s.Tags(ctx, src.Bucket, src.Key, src.VersionID)
		if err != nil {
			return "", err
		}
		meta.Tags = tags
	}
	id, _, err := s.CreateMultipart(ctx, src.Bucket, src.Key, meta, false)
	if err != nil {
		return "", err
	}
	size := aws.ToInt64(head.ContentLength)
	partSize := engine.PartSizeFor(size, 512<<20)
	var parts []engine.Part
	for n, first := int32(1), int64(0); first < size; n, first = n+1, first+partSize {
		last := min(first+partSize, size) - 1
		etag, err := s.CopyPart(ctx, src, engine.ByteRange{First: first, Last: last}, src.Bucket, src.Key, id, n)
		if err != nil {
			_ = s.AbortMultipart(context.WithoutCancel(ctx), src.Bucket, src.Key, id)
			return "", err
		}
		parts = append(parts, engine.Part{Number: n, ETag: etag, Size: last - first + 1})
	}
	v, err := s.CompleteMultipart(ctx, src.Bucket, src.Key, id, parts)
	if err != nil {
		_ = s.AbortMultipart(context.WithoutCancel(ctx), src.Bucket, src.Key, id)
	}
	return v, err
}

// EnsureBucket creates bucket, with versioning enabled, when it does not
// exist, and reports whether it did.
func (s *Store) EnsureBucket(ctx context.Context, bucket string) (bool, error) {
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &bucket}); err == nil {
		return false, nil
	} else if statusOf(err) != http.StatusNotFound && !isCode(err, "NotFound") && !isCode(err, "NoSuchBucket") {
		return false, classify(err, onDestination)
	}
	in := &s3.CreateBucketInput{Bucket: &bucket}
	if s.region != "" && s.region != "us-east-1" {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{LocationConstraint: types.BucketLocationConstraint(s.region)}
	}
	if _, err := s.client.CreateBucket(ctx, in); err != nil {
		return false, fmt.Errorf("create bucket %s: %w", bucket, classify(err, onDestination))
	}
	_, err := s.client.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: &bucket,
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled}})
	if err != nil {
		return true, fmt.Errorf("enable versioning on the new bucket %s: %w", bucket, classify(err, onDestination))
	}
	return true, nil
}

// Empty reports whether a bucket holds no version and no delete marker.
func (s *Store) Empty(ctx context.Context, bucket string) (bool, error) {
	out, err := s.client.ListObjectVersions(ctx, &s3.ListObjectVersionsInput{Bucket: &bucket, MaxKeys: aws.Int32(1)})
	if err != nil {
		return false, classify(err, onDestination)
	}
	return len(out.Versions) == 0 && len(out.DeleteMarkers) == 0, nil
}

// Versioning returns the bucket's versioning status ("Enabled",
// "Suspended" or "" for never enabled).
func (s *Store) Versioning(ctx context.Context, bucket string) (string, error) {
	out, err := s.client.GetBucketVersioning(ctx, &s3.GetBucketVersioningInput{Bucket: &bucket})
	if err != nil {
		return "", classify(err, onDestination)
	}
	return string(out.Status), nil
}

// Head returns a version's size, ETag and user metadata (verify uses it).
func (s *Store) Head(ctx context.Context, bucket, key, versionID string) (int64, string, map[string]string, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: &key, VersionId: optional(versionID)})
	if err != nil {
		return 0, "", nil, classify(err, onSource)
	}
	return aws.ToInt64(out.ContentLength), strings.Trim(aws.ToString(out.ETag), `"`), out.Metadata, nil
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
