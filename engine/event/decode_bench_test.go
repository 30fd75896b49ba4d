package event

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkDecode is the decoder's cost on the message S3 sends for one
// PUT: one per small object on a busy bucket.
func BenchmarkDecode(b *testing.B) {
	body, err := os.ReadFile(filepath.Join("testdata", "s3-put.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}
