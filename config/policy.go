package config

import (
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/s3replicad/s3replicad/dynamostate"
)

// PolicyDoc is an IAM policy document.
type PolicyDoc struct {
	Version   string            `json:"Version"`
	Statement []PolicyStatement `json:"Statement"`
}

// PolicyStatement is one statement of a PolicyDoc.
type PolicyStatement struct {
	Sid      string   `json:"Sid"`
	Effect   string   `json:"Effect"`
	Action   []string `json:"Action"`
	Resource []string `json:"Resource"`
}

// Policy is the least-privilege IAM policy of the source side of cfg: read
// the selected versions and their tags, list versions for backfill and
// verify, consume the queue, and use a cluster's table.
func (cfg *Config) Policy() PolicyDoc {
	objects := map[string]bool{}
	buckets := map[string]bool{}
	tags := false
	for _, r := range cfg.Rules {
		if !*r.Enabled {
			continue
		}
		buckets["arn:aws:s3:::"+r.SourceBucket] = true
		objects["arn:aws:s3:::"+r.SourceBucket+"/"+r.Filter.Prefix+"*"] = true
		tags = true // tags are copied with every replica
	}
	// GetObject reads the null version of an unversioned or suspended
	// bucket (a read without a version id); GetObjectVersion every other.
	read := []string{"s3:GetObject", "s3:GetObjectVersion"}
	if tags {
		read = append(read, "s3:GetObjectTagging", "s3:GetObjectVersionTagging")
	}
	doc := PolicyDoc{Version: "2012-10-17"}
	if len(objects) > 0 {
		doc.Statement = append(doc.Statement,
			PolicyStatement{Sid: "ReadSourceVersions", Effect: "Allow", Action: read, Resource: sortedKeys(objects)},
			PolicyStatement{Sid: "ListSourceVersions", Effect: "Allow", Action: []string{"s3:GetBucketVersioning", "s3:ListBucketVersions"}, Resource: sortedKeys(buckets)},
		)
	}
	if cl := cfg.Cluster; cl != nil {
		// The cluster's table and its indexes; `cluster init` also needs
		// dynamodb:CreateTable, which the daemon does not.
		table := fmt.Sprintf("arn:aws:dynamodb:%s:*:table/%s", cl.DynamoDB.Region, cl.DynamoDB.Table)
		doc.Statement = append(doc.Statement, PolicyStatement{Sid: "ClusterStateTable", Effect: "Allow",
			Action: dynamostate.Actions(), Resource: []string{table, table + "/index/*"}})
	}
	doc.Statement = append(doc.Statement, PolicyStatement{
		Sid: "ConsumeEventQueue", Effect: "Allow",
		Action:   []string{"sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"},
		Resource: []string{queueARN(cfg.Queue.URL, cfg.Queue.Region)},
	})
	return doc
}

// queueARN derives a queue's ARN from its URL
// (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME).
func queueARN(raw, region string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "*"
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) != 2 {
		return "*"
	}
	if h := strings.Split(u.Hostname(), "."); len(h) >= 3 && h[0] == "sqs" {
		region = h[1]
	}
	return fmt.Sprintf("arn:aws:sqs:%s:%s:%s", region, parts[0], parts[1])
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
