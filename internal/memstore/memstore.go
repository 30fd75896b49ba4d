// Package memstore is an in-memory versioned object store behind the
// engine's store interfaces (engine.ObjectStore and engine.ServerSideCopier),
// for tests. It behaves as S3 does where the engine can tell: MD5 ETags,
// multipart uploads with S3's part rules, delete markers, paged version
// listings, conditional reads and copies, and errors classified as the S3
// adapter classifies S3's. engine/storetest holds it to the same suite as
// the S3 adapter on real servers.
package memstore

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Version is one stored version or delete marker.
type Version struct {
	ID     string
	Body   []byte
	Meta   engine.ObjectMeta
	Marker bool
	ETag   string
	At     time.Time
}

// Store is a set of versioned buckets. The zero value is not usable: see
// New. Views made by Denied and WithFault share their Store's data.
type Store struct {
	d *data
	// Fault, when set, is called first by every method with its name
	// ("Put", "Get", ...); an error it returns is the call's.
	Fault func(call string) error
	// OnWrite, when set, is called after each version or delete marker is
	// written, outside the store's lock.
	OnWrite func(v Version)
	// PageSize is the most entries a ListVersions page holds (0: 1000).
	PageSize int
	denied   bool
}

type data struct {
	mu       sync.Mutex
	open     bool                 // every bucket exists
	buckets  map[string]bool      // when not open
	plain    map[string]bool      // buckets without versioning
	versions map[string][]Version // bucket + "/" + key -> oldest first
	uploads  map[string]*upload
	seq      int
}

type upload struct {
	bucket, key string
	meta        engine.ObjectMeta
	algo        string
	parts       map[int32]part
}

type part struct {
	etag string
	data []byte
	crc  string
}

var (
	_ engine.ObjectStore      = (*Store)(nil)
	_ engine.ServerSideCopier = (*Store)(nil)
)

// New returns an empty store holding the given buckets, versioned; with
// none, every bucket exists (what most engine tests want).
func New(buckets ...string) *Store {
	d := &data{open: len(buckets) == 0, buckets: map[string]bool{}, plain: map[string]bool{}, versions: map[string][]Version{}, uploads: map[string]*upload{}}
	for _, b := range buckets {
		d.buckets[b] = true
	}
	return &Store{d: d}
}

// CreateBucket adds a bucket.
func (m *Store) CreateBucket(name string) {
	m.d.mu.Lock()
	m.d.buckets[name] = true
	m.d.mu.Unlock()
}

// CreateUnversionedBucket adds a bucket without versioning: each write
// replaces the key's one version, the null version (id "").
func (m *Store) CreateUnversionedBucket(name string) {
	m.d.mu.Lock()
	m.d.buckets[name], m.d.plain[name] = true, true
	m.d.mu.Unlock()
}

// Denied returns a view of the same data whose every call is refused, as
// a store refuses a client with wrong credentials.
func (m *Store) Denied() *Store { return &Store{d: m.d, denied: true, PageSize: m.PageSize} }

// WithFault returns a view of the same data with fault as its Fault.
func (m *Store) WithFault(fault func(call string) error) *Store {
	return &Store{d: m.d, Fault: fault, PageSize: m.PageSize}
}

// Add stores a version of key as a client of the store would write it
// (v.ID and v.At are set when empty; v.ETag is computed) and returns its
// id. It bypasses Fault.
func (m *Store) Add(bucket, key string, v Version) string {
	m.d.mu.Lock()
	v = m.d.addLocked(bucket, key, v)
	m.d.mu.Unlock()
	m.wrote(v)
	return v.ID
}

// History returns key's versions and delete markers, oldest first.
func (m *Store) History(bucket, key string) []Version {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	return slices.Clone(m.d.versions[bucket+"/"+key])
}

// Find returns one version of key.
func (m *Store) Find(bucket, key, id string) (Version, bool) {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	return m.d.findLocked(bucket, key, id)
}

// DeleteVersion removes a version for good, as a versioned DELETE does.
func (m *Store) DeleteVersion(bucket, key, id string) bool {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	vs := m.d.versions[bucket+"/"+key]
	for i, v := range vs {
		if v.ID == id {
			m.d.versions[bucket+"/"+key] = slices.Delete(slices.Clone(vs), i, i+1)
			return true
		}
	}
	return false
}

// Uploads is the number of multipart uploads in progress.
func (m *Store) Uploads() int {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	return len(m.d.uploads)
}

func (m *Store) wrote(v Version) {
	if m.OnWrite != nil {
		m.OnWrite(v)
	}
}

func (d *data) addLocked(bucket, key string, v Version) Version {
	d.seq++
	switch {
	case d.plain[bucket]:
		v.ID = ""
		delete(d.versions, bucket+"/"+key) // the null version is replaced
	case v.ID == "":
		v.ID = fmt.Sprintf("v%04d", d.seq)
	}
	if v.At.IsZero() {
		v.At = time.Now()
	}
	if !v.Marker && v.ETag == "" {
		v.ETag = md5Hex(v.Body)
	}
	v.Meta.Metadata = maps.Clone(v.Meta.Metadata)
	v.Meta.Tags = maps.Clone(v.Meta.Tags)
	d.versions[bucket+"/"+key] = append(d.versions[bucket+"/"+key], v)
	return v
}

func (d *data) findLocked(bucket, key, id string) (Version, bool) {
	for _, v := range d.versions[bucket+"/"+key] {
		if v.ID == id {
			return v, true
		}
	}
	return Version{}, false
}

// S3's errors, classified as s3store classifies them.
func gone(code string) error {
	return &engine.Error{Class: engine.Gone, Reason: engine.ReasonSourceMissing, Err: errors.New(code)}
}

func invalid(code string) error {
	return &engine.Error{Class: engine.Permanent, Reason: engine.ReasonInvalid, Err: errors.New(code)}
}

var (
	errNoSuchBucket = &engine.Error{Class: engine.Permanent, Reason: engine.ReasonNoSuchBucket, Err: errors.New("NoSuchBucket")}
	errDenied       = &engine.Error{Class: engine.Permanent, Reason: engine.ReasonAccessDenied, Err: errors.New("AccessDenied")}
	errBadDigest    = &engine.Error{Class: engine.Transient, Reason: engine.ReasonIntegrity, Err: errors.New("BadDigest")}
)

// enter checks the call's credentials, fault and bucket, and takes the
// lock (which the caller releases).
func (m *Store) enter(call string, buckets ...string) error {
	if m.denied {
		return errDenied
	}
	if m.Fault != nil {
		if err := m.Fault(call); err != nil {
			return err
		}
	}
	m.d.mu.Lock()
	for _, b := range buckets {
		if !m.d.open && !m.d.buckets[b] {
			m.d.mu.Unlock()
			return errNoSuchBucket
		}
	}
	return nil
}

// resolve finds the version a reference names, as a GET would: the
// current one without a version id. A source call's misses are Gone.
func (d *data) resolve(ref engine.VersionRef) (Version, error) {
	vs := d.versions[ref.Bucket+"/"+ref.Key]
	var v Version
	switch {
	case ref.VersionID == "" && len(vs) == 0:
		return v, gone("NoSuchKey")
	case ref.VersionID == "":
		v = vs[len(vs)-1]
	default:
		var ok bool
		if v, ok = d.findLocked(ref.Bucket, ref.Key, ref.VersionID); !ok {
			return v, gone("NoSuchVersion")
		}
	}
	if v.Marker {
		// S3: 404 NoSuchKey for the current marker, 405 with
		// x-amz-delete-marker for a marker asked for by id; both are gone.
		return v, gone("MethodNotAllowed (delete marker)")
	}
	if ref.IfMatch != "" && strings.Trim(ref.IfMatch, `"`) != v.ETag {
		return v, &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther, Err: fmt.Errorf("%w: PreconditionFailed", engine.ErrChanged)}
	}
	return v, nil
}

// Get implements engine.Source.
func (m *Store) Get(_ context.Context, ref engine.VersionRef, r *engine.ByteRange) (*engine.Object, error) {
	if err := m.enter("Get", ref.Bucket); err != nil {
		return nil, err
	}
	v, err := m.d.resolve(ref)
	m.d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	body := v.Body
	if r != nil && len(body) > 0 {
		if r.First >= int64(len(body)) {
			return nil, invalid("InvalidRange")
		}
		body = body[r.First:min(r.Last+1, int64(len(body)))]
	}
	return &engine.Object{ObjectMeta: cloneMeta(v.Meta), Size: int64(len(v.Body)), ETag: v.ETag, TagCount: len(v.Meta.Tags),
		VersionID: v.ID, LastModified: v.At, Body: io.NopCloser(bytes.NewReader(body))}, nil
}

// Tags implements engine.Source.
func (m *Store) Tags(_ context.Context, bucket, key, id string) (map[string]string, error) {
	if err := m.enter("Tags", bucket); err != nil {
		return nil, err
	}
	defer m.d.mu.Unlock()
	v, err := m.d.resolve(engine.VersionRef{Bucket: bucket, Key: key, VersionID: id})
	if err != nil {
		return nil, err
	}
	tags := maps.Clone(v.Meta.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	return tags, nil
}

// ListVersions implements engine.Source: keys ascending, each key's
// versions newest first, starting after the markers.
func (m *Store) ListVersions(_ context.Context, bucket, prefix, keyMarker, versionMarker string) (engine.VersionPage, error) {
	if err := m.enter("ListVersions", bucket); err != nil {
		return engine.VersionPage{}, err
	}
	defer m.d.mu.Unlock()
	var keys []string
	for bk := range m.d.versions {
		k, ok := strings.CutPrefix(bk, bucket+"/")
		if ok && strings.HasPrefix(k, prefix) && k >= keyMarker && len(m.d.versions[bk]) > 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	size := m.PageSize
	if size <= 0 {
		size = 1000
	}
	var page engine.VersionPage
	for _, k := range keys {
		vs := m.d.versions[bucket+"/"+k]
		i := len(vs) - 1
		if k == keyMarker {
			if versionMarker == "" {
				continue // the key marker's key was listed whole
			}
			for i >= 0 && vs[i].ID != versionMarker {
				i--
			}
			i-- // after the marker
		}
		for ; i >= 0; i-- {
			if len(page.Versions) == size {
				last := page.Versions[size-1]
				page.Truncated, page.NextKeyMarker, page.NextVersionIDMarker = true, last.Key, last.VersionID
				return page, nil
			}
			v := vs[i]
			e := engine.Version{Key: k, VersionID: v.ID, IsLatest: i == len(vs)-1, DeleteMarker: v.Marker, LastModified: v.At}
			if !v.Marker {
				e.ETag, e.Size = v.ETag, int64(len(v.Body))
			}
			page.Versions = append(page.Versions, e)
		}
	}
	return page, nil
}

// Put implements engine.Destination; the payload's CRC32C is checked as
// S3 checks x-amz-checksum-crc32c.
func (m *Store) Put(_ context.Context, bucket, key string, meta engine.ObjectMeta, body engine.Payload) (string, error) {
	if err := m.enter("Put", bucket); err != nil {
		return "", err
	}
	if crc32.Checksum(body.Data, castagnoli) != body.CRC32C {
		m.d.mu.Unlock()
		return "", errBadDigest
	}
	v := m.d.addLocked(bucket, key, Version{Body: bytes.Clone(body.Data), Meta: meta})
	m.d.mu.Unlock()
	m.wrote(v)
	return v.ID, nil
}

// S3's multipart limits.
const (
	minPartSize = 5 << 20
	maxParts    = 10000
)

// CreateMultipart implements engine.Destination; the store keeps CRC32C
// part checksums when asked.
func (m *Store) CreateMultipart(_ context.Context, bucket, key string, meta engine.ObjectMeta, partChecksums bool) (string, string, error) {
	if err := m.enter("CreateMultipart", bucket); err != nil {
		return "", "", err
	}
	defer m.d.mu.Unlock()
	m.d.seq++
	id := fmt.Sprintf("up%04d", m.d.seq)
	u := &upload{bucket: bucket, key: key, meta: cloneMeta(meta), parts: map[int32]part{}}
	if partChecksums {
		u.algo = "CRC32C"
	}
	m.d.uploads[id] = u
	return id, u.algo, nil
}

func (d *data) uploadLocked(bucket, key, id string) (*upload, error) {
	u, ok := d.uploads[id]
	if !ok || u.bucket != bucket || u.key != key {
		return nil, invalid("NoSuchUpload")
	}
	return u, nil
}

// UploadPart implements engine.Destination.
func (m *Store) UploadPart(_ context.Context, bucket, key, uploadID string, n int32, body engine.Payload) (string, error) {
	if err := m.enter("UploadPart", bucket); err != nil {
		return "", err
	}
	defer m.d.mu.Unlock()
	u, err := m.d.uploadLocked(bucket, key, uploadID)
	if err != nil {
		return "", err
	}
	if n < 1 || n > maxParts {
		return "", invalid("InvalidArgument (part number)")
	}
	if crc32.Checksum(body.Data, castagnoli) != body.CRC32C {
		return "", errBadDigest
	}
	p := part{etag: md5Hex(body.Data), data: bytes.Clone(body.Data)}
	if u.algo != "" {
		p.crc = engine.CRC32CBase64(body.CRC32C)
	}
	u.parts[n] = p
	return p.etag, nil
}

// ListParts implements engine.Destination.
func (m *Store) ListParts(_ context.Context, bucket, key, uploadID string) ([]engine.Part, error) {
	if err := m.enter("ListParts", bucket); err != nil {
		return nil, err
	}
	defer m.d.mu.Unlock()
	u, err := m.d.uploadLocked(bucket, key, uploadID)
	if err != nil {
		return nil, err
	}
	var out []engine.Part
	for n, p := range u.parts {
		out = append(out, engine.Part{Number: n, ETag: p.etag, Size: int64(len(p.data))})
	}
	slices.SortFunc(out, func(a, b engine.Part) int { return int(a.Number - b.Number) })
	return out, nil
}

// CompleteMultipart implements engine.Destination with S3's checks: parts
// ascending, each one uploaded with that ETag (and, when the upload keeps
// checksums, that CRC32C), all but the last at least 5 MiB.
func (m *Store) CompleteMultipart(_ context.Context, bucket, key, uploadID string, parts []engine.Part) (string, error) {
	if err := m.enter("CompleteMultipart", bucket); err != nil {
		return "", err
	}
	u, err := m.d.uploadLocked(bucket, key, uploadID)
	if err != nil {
		m.d.mu.Unlock()
		return "", err
	}
	if len(parts) == 0 {
		m.d.mu.Unlock()
		return "", invalid("MalformedXML (no parts)")
	}
	var body []byte
	sums := md5.New()
	for i, cp := range parts {
		p, ok := u.parts[cp.Number]
		switch {
		case i > 0 && cp.Number <= parts[i-1].Number:
			err = invalid("InvalidPartOrder")
		case !ok || strings.Trim(cp.ETag, `"`) != p.etag || u.algo != "" && cp.CRC32C != p.crc:
			err = invalid("InvalidPart")
		case i < len(parts)-1 && len(p.data) < minPartSize:
			err = invalid("EntityTooSmall")
		}
		if err != nil {
			m.d.mu.Unlock()
			return "", err
		}
		body = append(body, p.data...)
		sum, _ := hex.DecodeString(p.etag)
		sums.Write(sum)
	}
	delete(m.d.uploads, uploadID)
	etag := fmt.Sprintf("%x-%d", sums.Sum(nil), len(parts))
	v := m.d.addLocked(bucket, key, Version{Body: body, Meta: u.meta, ETag: etag})
	m.d.mu.Unlock()
	m.wrote(v)
	return v.ID, nil
}

// AbortMultipart implements engine.Destination.
func (m *Store) AbortMultipart(_ context.Context, bucket, key, uploadID string) error {
	if err := m.enter("AbortMultipart", bucket); err != nil {
		return err
	}
	defer m.d.mu.Unlock()
	if _, err := m.d.uploadLocked(bucket, key, uploadID); err != nil {
		return err
	}
	delete(m.d.uploads, uploadID)
	return nil
}

// PutDeleteMarker implements engine.Destination. As on S3, a key with no
// version gets a marker too.
func (m *Store) PutDeleteMarker(_ context.Context, bucket, key string) (string, error) {
	if err := m.enter("PutDeleteMarker", bucket); err != nil {
		return "", err
	}
	v := m.d.addLocked(bucket, key, Version{Marker: true})
	m.d.mu.Unlock()
	m.wrote(v)
	return v.ID, nil
}

// Head implements engine.Destination. A miss is permanent, not gone: a
// HEAD's 404 carries no S3 error code.
func (m *Store) Head(_ context.Context, bucket, key, id string) (int64, string, map[string]string, error) {
	if err := m.enter("Head", bucket); err != nil {
		return 0, "", nil, err
	}
	defer m.d.mu.Unlock()
	v, err := m.d.resolve(engine.VersionRef{Bucket: bucket, Key: key, VersionID: id})
	if err != nil {
		if v.Marker {
			return 0, "", nil, err // 405 with x-amz-delete-marker: gone
		}
		return 0, "", nil, invalid("NotFound")
	}
	return int64(len(v.Body)), v.ETag, maps.Clone(v.Meta.Metadata), nil
}

// FindReplica implements engine.Destination: newest first, it stops at
// the first version written before since or at the one of.After names; a
// delete marker counts only as the newest version.
func (m *Store) FindReplica(_ context.Context, bucket, key string, a engine.Action, of engine.ReplicaOf, since time.Time) (string, bool, error) {
	if err := m.enter("FindReplica", bucket); err != nil {
		return "", false, err
	}
	defer m.d.mu.Unlock()
	vs := m.d.versions[bucket+"/"+key]
	for i := len(vs) - 1; i >= 0; i-- {
		v := vs[i]
		if v.At.Before(since) || of.After != 0 && engine.VersionDigest(v.ID) == of.After {
			return "", false, nil
		}
		if a == engine.ActionDeleteMarker {
			return v.ID, v.Marker, nil
		}
		if v.Marker || !of.Candidate(engine.Version{Key: key, VersionID: v.ID, Size: int64(len(v.Body))}) {
			continue
		}
		if of.Matches(v.Meta.Metadata) {
			return v.ID, true, nil
		}
	}
	return "", false, nil
}

// Current implements engine.Destination: the key's newest version or
// delete marker.
func (m *Store) Current(_ context.Context, bucket, key string) (engine.Version, bool, error) {
	if err := m.enter("Current", bucket); err != nil {
		return engine.Version{}, false, err
	}
	defer m.d.mu.Unlock()
	vs := m.d.versions[bucket+"/"+key]
	if len(vs) == 0 {
		return engine.Version{}, false, nil
	}
	v := vs[len(vs)-1]
	return engine.Version{Key: key, VersionID: v.ID, ETag: v.ETag, Size: int64(len(v.Body)), IsLatest: true,
		DeleteMarker: v.Marker, LastModified: v.At}, true, nil
}

// CopyVersion implements engine.Destination: a copy of one of key's
// versions on top, with its headers, metadata and tags.
func (m *Store) CopyVersion(_ context.Context, bucket, key, id string) (string, error) {
	if err := m.enter("CopyVersion", bucket); err != nil {
		return "", err
	}
	s, err := m.d.resolve(engine.VersionRef{Bucket: bucket, Key: key, VersionID: id})
	if err != nil {
		m.d.mu.Unlock()
		return "", err
	}
	v := m.d.addLocked(bucket, key, Version{Body: s.Body, Meta: cloneMeta(s.Meta), ETag: s.ETag})
	m.d.mu.Unlock()
	m.wrote(v)
	return v.ID, nil
}

// Copy implements engine.ServerSideCopier: a new version of bucket/key
// with src's bytes and meta's headers, metadata and tags.
func (m *Store) Copy(_ context.Context, src engine.VersionRef, bucket, key string, meta engine.ObjectMeta) (string, error) {
	if err := m.enter("Copy", src.Bucket, bucket); err != nil {
		return "", err
	}
	s, err := m.d.resolve(src)
	if err != nil {
		m.d.mu.Unlock()
		return "", err
	}
	v := m.d.addLocked(bucket, key, Version{Body: s.Body, Meta: meta, ETag: s.ETag})
	m.d.mu.Unlock()
	m.wrote(v)
	return v.ID, nil
}

// CopyPart implements engine.ServerSideCopier.
func (m *Store) CopyPart(_ context.Context, src engine.VersionRef, r engine.ByteRange, bucket, key, uploadID string, n int32) (string, error) {
	if err := m.enter("CopyPart", src.Bucket, bucket); err != nil {
		return "", err
	}
	defer m.d.mu.Unlock()
	s, err := m.d.resolve(src)
	if err != nil {
		return "", err
	}
	u, err := m.d.uploadLocked(bucket, key, uploadID)
	if err != nil {
		return "", err
	}
	if r.First < 0 || r.Last < r.First || r.Last >= int64(len(s.Body)) {
		return "", invalid("InvalidRange")
	}
	b := bytes.Clone(s.Body[r.First : r.Last+1])
	p := part{etag: md5Hex(b), data: b}
	if u.algo != "" {
		p.crc = engine.CRC32CBase64(crc32.Checksum(b, castagnoli))
	}
	u.parts[n] = p
	return p.etag, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func md5Hex(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

func cloneMeta(m engine.ObjectMeta) engine.ObjectMeta {
	m.Metadata = maps.Clone(m.Metadata)
	m.Tags = maps.Clone(m.Tags)
	return m
}
