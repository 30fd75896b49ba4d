package event

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// The one-pass decoding of S3's own messages answers exactly what the
// general path answers, and stands aside where it could not.
func TestDecodeS3Once(t *testing.T) {
	put, err := os.ReadFile(filepath.Join("testdata", "s3-put.json"))
	if err != nil {
		t.Fatal(err)
	}
	rec := `{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k","size":1,"sequencer":"0A"}}}`
	other := `{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b2"},"object":{"key":"k2","sequencer":"0B"}}}`
	for _, c := range []struct {
		name string
		body string
		fast bool // the one pass answers
	}{
		{"s3 put", string(put), true},
		{"multi", `{"Records":[` + rec + `,` + other + `]}`, true},
		{"lower-case key", `{"records":[` + rec + `]}`, true},
		// Twice, the lists would be merged element by element.
		{"twice", `{"Records":[` + rec + `],"Records":[{"eventName":"ObjectCreated:Copy"}]}`, false},
		{"twice, other case", `{"Records":[` + rec + `],"RECORDS":[{"eventName":"x"}]}`, false},
		{"escaped twice", `{"Records":[` + rec + `],"Record\u0073":[{"eventName":"x"}]}`, false},
		{"folded twice", `{"Records":[` + rec + `],"Record` + "\u017f" + `":[{"eventName":"x"}]}`, false},
		{"key ending in records", `{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"my-records","sequencer":"01"}}}]}`, false},
		{"null", `{"Records":null}`, false},
		{"not a list", `{"Records":{}}`, false},
		{"bad record", `{"Records":[{"eventVersion":"1.0"}]}`, false},
		{"bad type elsewhere", `{"Records":[` + rec + `],"Type":5}`, false},
		{"sns", `{"Type":"Notification","Message":"{}"}`, false},
	} {
		body := []byte(c.body)
		fast, ok := decodeS3Once(body)
		if ok != c.fast {
			t.Errorf("%s: one pass answered %v, want %v", c.name, ok, c.fast)
		}
		general, gerr := decodeGeneral(body)
		if ok && (gerr != nil || !reflect.DeepEqual(fast, general)) {
			t.Errorf("%s: one pass %+v, general path %+v (%v)", c.name, fast, general, gerr)
		}
		got, err := Decode(body)
		if (err == nil) != (gerr == nil) || !reflect.DeepEqual(got, general) {
			t.Errorf("%s: Decode %+v (%v), general path %+v (%v)", c.name, got, err, general, gerr)
		}
	}
}

// FuzzDecodeS3Once: wherever the one pass answers, the general path
// answers the same records.
func FuzzDecodeS3Once(f *testing.F) {
	files, _ := filepath.Glob("testdata/*")
	for _, file := range files {
		if body, err := os.ReadFile(file); err == nil {
			f.Add(body)
		}
	}
	f.Add([]byte(`{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}],"records":[]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		body = bytes.TrimSpace(body)
		if len(body) == 0 {
			return
		}
		fast, ok := decodeS3Once(body)
		if !ok {
			return
		}
		general, err := decodeGeneral(body)
		if err != nil || !reflect.DeepEqual(fast, general) {
			t.Fatalf("one pass %+v, general path %+v (%v)", fast, general, err)
		}
	})
}
