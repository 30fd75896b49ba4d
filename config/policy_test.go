package config

import (
	"testing"
)

const policyConfig = `state_dir: /tmp/s3r
queue:
  url: https://sqs.us-east-1.amazonaws.com/123456789012/s3-events
destinations:
  - name: dr
    endpoint: https://s3.example.net:9000
    access_key_id: AKID
    secret_access_key: s3cr3t
rules:
  - id: all
    source_bucket: src
    destination: dr
    destination_bucket: dst
`

func TestPolicyActions(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(policyConfig), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	doc := cfg.Policy()
	got := map[string]bool{}
	for _, s := range doc.Statement {
		for _, a := range s.Action {
			got[a] = true
		}
		for _, r := range s.Resource {
			if r == "*" {
				t.Errorf("statement %s grants on *", s.Sid)
			}
		}
	}
	// GetObject: reading a null version (unversioned or suspended source) takes it.
	want := []string{"s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:GetObjectVersionTagging", "s3:ListBucketVersions", "s3:GetBucketVersioning",
		"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"}
	for _, a := range want {
		if !got[a] {
			t.Errorf("policy lacks %s", a)
		}
	}
	if len(got) != len(want) {
		t.Errorf("policy has %d actions, want exactly %d: %v", len(got), len(want), got)
	}
	if arn := queueARN(cfg.Queue.URL, ""); arn != "arn:aws:sqs:us-east-1:123456789012:s3-events" {
		t.Errorf("queue ARN %s", arn)
	}
}
