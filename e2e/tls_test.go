package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// An https destination whose certificate a private CA signed works through
// ca_file; without it the certificate is refused (verification is never
// turned off): nothing is written, nothing is skipped or failed for good,
// and the copy goes through once the CA is configured.
func TestPrivateCAThroughCAFile(t *testing.T) {
	t.Parallel()
	certs, err := testenv.NewTLS(t.TempDir())
	must(t, err)
	proxy, err := faultproxy.StartTLS(env.Destination, certs.CertFile, certs.KeyFile)
	must(t, err)
	t.Cleanup(proxy.Close)
	if !strings.HasPrefix(proxy.URL(), "https://") {
		t.Fatal(proxy.URL())
	}

	w := newWorld(t, worldOpts{dstEndpoint: proxy.URL()})
	d := w.start()
	ev := w.put("k", []byte("over TLS"))
	w.send(testenv.S3Body(ev))
	waitFor(t, 20*time.Second, "a refused certificate", func() bool {
		return strings.Contains(d.logs.String(), "certificate signed by unknown authority")
	})
	counts, err := w.statusCounts()
	must(t, err)
	if counts["completed"]+counts["failed"]+counts["skipped"] != 0 {
		t.Fatalf("an untrusted destination was written to or given up on: %v", counts)
	}
	if vs, _ := w.destVersions("k"); len(vs) != 0 {
		t.Fatal("written through an untrusted certificate")
	}
	d.stop()

	w2 := newWorld(t, worldOpts{dstEndpoint: proxy.URL(), destExtra: "    ca_file: " + certs.CAFile + "\n"})
	d = w2.start()
	ev = w2.put("k", []byte("over TLS"))
	w2.send(testenv.S3Body(ev))
	w2.waitExact([]string{"k"}, 30*time.Second)
	d.stop()
}
