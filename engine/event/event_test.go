package event

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDecodeFixtures(t *testing.T) {
	type want struct {
		kind      Kind
		bucket    string
		key       string
		version   string
		sequencer string
		size      int64
	}
	cases := []struct {
		file string
		want []want
	}{
		{"s3-put.json", []want{{Created, "photos", "red flower+%=&.jpg", "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd", "0055AED6DCD90281E5", 1024}}},
		{"s3-multi.json", []want{
			{Created, "b", "big.bin", "v1", "0A", 104857600},
			{DeleteMarker, "b", "big.bin", "dm1", "0B", -1},
			{VersionDeleted, "b", "old.txt", "v0", "0C", -1},
			{Other, "b", "cold.txt", "v9", "0D", 5},
		}},
		{"sns.json", []want{{Created, "photos", "a/b/c d.txt", "v2", "0062", 3}}},
		{"eventbridge-created.json", []want{{Created, "photos", "red flower+1.jpg", "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", "617f08299329d189", 5}}},
		{"eventbridge-deleted.json", []want{{DeleteMarker, "photos", "red flower+1.jpg", "dm-7", "617f0837b476e463", -1}}},
		{"test-event.json", []want{{Test, "photos", "", "", "", 0}}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", c.file))
			if err != nil {
				t.Fatal(err)
			}
			recs, err := Decode(body)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if len(recs) != len(c.want) {
				t.Fatalf("got %d records, want %d: %+v", len(recs), len(c.want), recs)
			}
			for i, w := range c.want {
				r := recs[i]
				if r.Kind != w.kind || r.Bucket != w.bucket || r.Key != w.key || r.VersionID != w.version || r.Sequencer != w.sequencer || r.Size != w.size {
					t.Errorf("record %d = %+v, want %+v", i, r, w)
				}
			}
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	files, err := filepath.Glob("testdata/bad-*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no malformed fixtures: %v", err)
	}
	extra := map[string]string{
		"empty":           "",
		"array":           "[1,2]",
		"records-empty":   `{"Records":[]}`,
		"records-object":  `{"Records":{}}`,
		"sns-not-json":    `{"Type":"Notification","Message":"nope"}`,
		"sns-nested":      `{"Type":"Notification","Message":"{\"Type\":\"Notification\",\"Message\":\"{}\"}"}`,
		"bad-percent":     `{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}`,
		"negative-size":   `{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k","size":-4}}}]}`,
		"bad-sequencer":   `{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k","sequencer":"xyz"}}}]}`,
		"eb-no-key":       `{"detail-type":"Object Created","detail":{"bucket":{"name":"b"},"object":{}}}`,
		"eb-no-bucket":    `{"detail-type":"Object Created","detail":{"object":{"key":"k"}}}`,
		"one-bad-of-many": `{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}},{"eventVersion":"2.1"}]}`,
	}
	for _, f := range files {
		body, _ := os.ReadFile(f)
		extra[f] = string(body)
	}
	for name, body := range extra {
		recs, err := Decode([]byte(body))
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
		if recs != nil {
			t.Errorf("%s: got records %+v with an error", name, recs)
		}
	}
}

func TestLongUnicodeKey(t *testing.T) {
	key := strings.Repeat("é", 500) // 1,000 bytes
	enc := strings.ReplaceAll(strings.ReplaceAll(strings.NewReplacer("%", "%25").Replace(key), " ", "+"), "é", "%C3%A9")
	body := `{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"` + enc + `","size":1,"versionId":"v","sequencer":"01"}}}]}`
	recs, err := Decode([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if recs[0].Key != key || len(recs[0].Key) != 1000 {
		t.Fatalf("key decoded to %d bytes", len(recs[0].Key))
	}
}

func TestCompareSequencer(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"0A", "0B", -1},
		{"0B", "0A", 1},
		{"0055AED6DCD90281E5", "0055AED6DCD90281E5", 0},
		{"0055AED6DCD90281E5", "0055AED6DCD90281E500", 0}, // right-padding with zeros
		{"0055AED6DCD90281E5", "0055AED6DCD90281E501", -1},
		{"1", "0FFFFFFFFF", 1},
		{"abc", "ABC", 0},
		{"", "0A", 0},
	}
	for _, c := range cases {
		if got := CompareSequencer(c.a, c.b); got != c.want {
			t.Errorf("CompareSequencer(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("testdata/*")
	for _, file := range files {
		body, err := os.ReadFile(file)
		if err == nil {
			f.Add(body)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		recs, err := Decode(body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || recs != nil {
				t.Fatalf("error %v must wrap ErrMalformed and come without records", err)
			}
			return
		}
		if len(recs) == 0 {
			t.Fatal("no error and no records")
		}
		for _, r := range recs {
			if r.Kind == Created || r.Kind == DeleteMarker || r.Kind == VersionDeleted {
				if r.Bucket == "" || r.Key == "" {
					t.Fatalf("record without bucket or key: %+v", r)
				}
			}
		}
	})
}
