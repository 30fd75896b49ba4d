package dynamostate

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/s3replicad/s3replicad/engine"
)

// Multipart uploads in progress: a header item (the upload without its
// parts) and one item per finished part, all in the upload's partition,
// so that recording a part costs one small write however many parts the
// object has (an item holds at most 400 KB; 10,000 parts do not fit in
// one). Every write is fenced like the op's own. The header is also in
// the queue index (u#shard) so that status can count uploads in progress.

// uploadMemo is what this node last wrote (or read) of an upload, so that
// SaveUpload writes only what changed.
type uploadMemo struct {
	shard  int
	header string
	parts  map[int32]string
}

type uploadHeader struct {
	UploadID string `json:"upload_id"`
	PartSize int64  `json:"part_size"`
	Size     int64  `json:"size"`
	ETag     string `json:"source_etag"`
	Checksum string `json:"checksum,omitempty"`
}

func partSK(n int32) string { return fmt.Sprintf("p#%05d", n) }

// LoadUpload implements engine.StateStore: one strongly consistent query.
func (s *Store) LoadUpload(ctx context.Context, opID string) (*engine.Upload, error) {
	items, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(uploadPK(opID))},
	})
	if err != nil {
		return nil, s.classify(ctx, "read upload", err)
	}
	var up *engine.Upload
	memo := &uploadMemo{shard: -1, parts: map[int32]string{}}
	var parts []engine.Part
	for _, it := range items {
		sk := getS(it, attrSK)
		switch {
		case sk == "h":
			var h uploadHeader
			raw := getS(it, "up")
			if err := json.Unmarshal([]byte(raw), &h); err != nil {
				return nil, fmt.Errorf("dynamodb table %q: upload of %q: %w", s.cfg.Table, opID, err)
			}
			up = &engine.Upload{UploadID: h.UploadID, PartSize: h.PartSize, Size: h.Size, ETag: h.ETag, Checksum: h.Checksum}
			memo.header, memo.shard = raw, int(getN(it, attrShard))
		case strings.HasPrefix(sk, "p#"):
			var p engine.Part
			raw := getS(it, "part")
			if err := json.Unmarshal([]byte(raw), &p); err != nil {
				return nil, fmt.Errorf("dynamodb table %q: upload of %q: %w", s.cfg.Table, opID, err)
			}
			parts = append(parts, p)
			n, _ := strconv.Atoi(sk[2:])
			memo.parts[int32(n)] = raw
		}
	}
	if up == nil {
		// Parts without a header are the remains of a deletion that
		// stopped half way: there is no upload to resume.
		return nil, nil
	}
	up.Parts = parts
	s.mu.Lock()
	s.uploads[opID] = memo
	s.mu.Unlock()
	return up, nil
}

// uploadShard finds the shard of an op's upload: from the ops handed out
// here, or from what this node read or wrote of the upload.
func (s *Store) uploadShard(opID string) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.handed[opID]; ok {
		return h.shard, true
	}
	if m := s.uploads[opID]; m != nil && m.shard >= 0 {
		return m.shard, true
	}
	return 0, false
}

// SaveUpload implements engine.StateStore for an op this node was handed
// (Pending, Claim, Retry): it writes the header when it changed and the
// parts that are new or changed, and deletes the parts that were dropped.
func (s *Store) SaveUpload(ctx context.Context, opID string, u *engine.Upload) error {
	shard, ok := s.uploadShard(opID)
	if !ok {
		return fmt.Errorf("save upload: the operation was not handed out by this node: %w", ErrLeaseLost)
	}
	ep, err := s.fence(shard)
	if err != nil {
		return fmt.Errorf("save upload: %w", err)
	}
	s.mu.Lock()
	memo := s.uploads[opID]
	s.mu.Unlock()
	if memo == nil {
		if _, err := s.LoadUpload(ctx, opID); err != nil {
			return err
		}
		s.mu.Lock()
		memo = s.uploads[opID]
		if memo == nil {
			memo = &uploadMemo{parts: map[int32]string{}}
		}
		s.mu.Unlock()
	}
	hraw, err := json.Marshal(uploadHeader{UploadID: u.UploadID, PartSize: u.PartSize, Size: u.Size, ETag: u.ETag, Checksum: u.Checksum})
	if err != nil {
		return err
	}
	type write struct {
		sk     string
		item   map[string]types.AttributeValue // nil: delete
		n      int32
		raw    string
		header bool
	}
	var writes []write
	if string(hraw) != memo.header {
		item := key(uploadPK(opID), "h")
		item["up"], item[attrShard], item[attrEpoch] = str(string(hraw)), num(shard), num(ep)
		item[attrQ], item[attrQS] = str(queueUpload(shard)), str(digest(opID))
		writes = append(writes, write{sk: "h", item: item, header: true, raw: string(hraw)})
	}
	keep := map[int32]bool{}
	for _, p := range u.Parts {
		keep[p.Number] = true
		raw, err := json.Marshal(p)
		if err != nil {
			return err
		}
		if memo.parts[p.Number] == string(raw) {
			continue
		}
		item := key(uploadPK(opID), partSK(p.Number))
		item["part"], item[attrEpoch] = str(string(raw)), num(ep)
		writes = append(writes, write{sk: partSK(p.Number), item: item, n: p.Number, raw: string(raw)})
	}
	for n := range memo.parts {
		if !keep[n] {
			writes = append(writes, write{sk: partSK(n), n: n})
		}
	}
	done := make([]bool, len(writes))
	err = parallel(ctx, len(writes), func(ctx context.Context, i int) error {
		w := writes[i]
		if err := s.fencedWrite(ctx, uploadPK(opID), w.sk, w.item, ep); err != nil {
			return fmt.Errorf("save upload: %w", err)
		}
		done[i] = true
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	memo.shard = shard
	for i, w := range writes {
		switch {
		case !done[i]:
			// Unknown now: write it again next time.
			if w.header {
				memo.header = ""
			} else {
				memo.parts[w.n] = ""
			}
		case w.header:
			memo.header = w.raw
		case w.item == nil:
			delete(memo.parts, w.n)
		default:
			memo.parts[w.n] = w.raw
		}
	}
	s.uploads[opID] = memo
	return err
}

// fencedWrite puts (item) or deletes (nil) an item unless a newer holder
// of its shard wrote it.
func (s *Store) fencedWrite(ctx context.Context, pk, sk string, item map[string]types.AttributeValue, ep int64) error {
	rctx, cancel := s.request(ctx)
	defer cancel()
	cond := aws.String("attribute_not_exists(pk) OR ep <= :ep")
	vals := map[string]types.AttributeValue{":ep": num(ep)}
	var err error
	if item != nil {
		_, err = s.db.PutItem(rctx, &dynamodb.PutItemInput{TableName: aws.String(s.cfg.Table), Item: item,
			ConditionExpression: cond, ExpressionAttributeValues: vals})
	} else {
		_, err = s.db.DeleteItem(rctx, &dynamodb.DeleteItemInput{TableName: aws.String(s.cfg.Table), Key: key(pk, sk),
			ConditionExpression: cond, ExpressionAttributeValues: vals})
	}
	if conditionFailed(err) {
		return fmt.Errorf("a newer holder of the shard wrote it: %w", ErrLeaseLost)
	}
	return s.classify(ctx, "write upload", err)
}

// DeleteUpload implements engine.StateStore: the parts go first and the
// header last, so that an interrupted deletion leaves nothing to resume.
func (s *Store) DeleteUpload(ctx context.Context, opID string) error {
	shard, ok := s.uploadShard(opID)
	if !ok {
		if _, err := s.LoadUpload(ctx, opID); err != nil {
			return err
		}
		if shard, ok = s.uploadShard(opID); !ok {
			// Nothing stored, or parts only: they belong to no header.
			return s.deleteUploadItems(ctx, opID, -1)
		}
	}
	ep, err := s.fence(shard)
	if err != nil {
		return fmt.Errorf("delete upload: %w", err)
	}
	if err := s.deleteUploadItems(ctx, opID, ep); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.uploads, opID)
	s.mu.Unlock()
	return nil
}

func (s *Store) deleteUploadItems(ctx context.Context, opID string, ep int64) error {
	items, err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.cfg.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str(uploadPK(opID))},
		ProjectionExpression:      aws.String("sk, ep"),
	})
	if err != nil {
		return s.classify(ctx, "read upload", err)
	}
	var parts []string
	header := false
	for _, it := range items {
		if sk := getS(it, attrSK); sk == "h" {
			header = true
		} else {
			parts = append(parts, sk)
		}
		if ep < 0 {
			ep = max(ep, getN(it, attrEpoch))
		}
	}
	err = parallel(ctx, len(parts), func(ctx context.Context, i int) error {
		return s.fencedWrite(ctx, uploadPK(opID), parts[i], nil, ep)
	})
	if err == nil && header {
		err = s.fencedWrite(ctx, uploadPK(opID), "h", nil, ep)
	}
	if err != nil {
		return fmt.Errorf("delete upload: %w", err)
	}
	return nil
}
