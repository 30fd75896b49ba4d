package testenv

import (
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// A client that drops a request half way must not take the server down
// (dynalite 4.0.0 alone exits on it): the cluster tests cut connections.
func TestDynamoSurvivesDroppedRequests(t *testing.T) {
	d, err := StartDynamo(t.TempDir())
	if err != nil {
		if errors.Is(err, ErrNotInstalled) && os.Getenv("CI") != "true" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	defer d.Close()
	addr := strings.TrimPrefix(d.Endpoint, "http://")
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte("POST / HTTP/1.1\r\nHost: " + addr + "\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n" +
			"Content-Type: application/x-amz-json-1.0\r\nContent-Length: 100\r\n\r\n{\"Lim"))
		time.Sleep(50 * time.Millisecond)
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	resp, err := http.Post(d.Endpoint, "application/x-amz-json-1.0", strings.NewReader("{}"))
	if err != nil {
		t.Fatalf("the server is gone after clients dropped requests: %v", err)
	}
	resp.Body.Close()
}
