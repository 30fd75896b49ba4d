package e2e

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestBackfillVerifyAndRepair(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{rules: markerRules})
	// Versions that existed before replication: no events for them.
	w.put("a", []byte("a1"))
	w.put("a", []byte("a2"))
	w.put("b", []byte("b1"))
	w.put("c", []byte("c1"))
	w.put("c", []byte("c2"), func(in *s3.PutObjectInput) { in.Metadata = map[string]string{"m": "1"} })
	w.put("gone", []byte("x"))
	_, err := w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, "gone")
	must(t, err)
	for i := 0; i < 150; i++ {
		w.put(fmt.Sprintf("many/%03d", i), []byte(fmt.Sprint(i)))
	}

	out, _, code := w.cli("verify")
	if code != 1 || !strings.Contains(out, "missing    a  version") {
		t.Fatalf("verify before backfill: exit %d\n%s", code, out)
	}
	// A dry run says what it would copy, and copies nothing.
	out, errOut, code := w.cli("backfill", "-dry-run")
	if code != 0 || strings.Count(out, "copy          ") != 156 || !strings.Contains(out, "would copy 157 versions") ||
		!strings.Contains(out, "delete-marker gone") {
		t.Fatalf("backfill -dry-run: exit %d\n%s\n%s", code, out, errOut)
	}
	if vs, _ := w.destVersions("a"); len(vs) != 0 {
		t.Fatal("a dry run copied")
	}

	// kill -9 the backfill part way, then resume.
	cmd := exec.Command(binary, "backfill", "-config", w.configPath)
	cmd.Env = cliEnv()
	var logs bytes.Buffer
	cmd.Stderr = &logs
	must(t, cmd.Start())
	waitFor(t, 60*time.Second, "backfill under way", func() bool {
		n := 0
		p := s3.NewListObjectVersionsPaginator(w.dst, &s3.ListObjectVersionsInput{Bucket: &w.dstBucket})
		for p.HasMorePages() {
			page, err := p.NextPage(w.ctx)
			if err != nil {
				return false
			}
			n += len(page.Versions)
		}
		return n >= 20
	})
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	out, errOut, code = w.cli("backfill")
	if code != 0 || !strings.Contains(out, "backfill done") {
		t.Fatalf("backfill: exit %d\n%s\n%s", code, out, errOut)
	}
	out, errOut, code = w.cli("verify")
	if code != 0 {
		t.Fatalf("verify after backfill: exit %d\n%s\n%s\nfirst backfill log:\n%s", code, out, errOut, logs.String())
	}
	for _, k := range []string{"a", "c", "many/000", "many/149"} {
		vs, _ := w.destVersions(k)
		want := 1
		if k == "a" || k == "c" {
			want = 2
		}
		if len(vs) != want {
			t.Errorf("%s has %d destination versions after an interrupted and resumed backfill, want %d", k, len(vs), want)
		}
	}
	if body, _ := w.getDest("a", ""); string(body) != "a2" {
		t.Errorf("current a is %q, want a2", body)
	}
	if _, markers := w.destVersions("gone"); len(markers) != 1 {
		t.Errorf("delete marker of gone not replicated by backfill")
	}
	// A second run copies nothing.
	out, _, code = w.cli("backfill")
	if code != 0 || !strings.Contains(out, "0 copies queued") {
		t.Fatalf("second backfill: exit %d: %s", code, out)
	}

	// Damage the destination by hand: overwrite one key, delete one version.
	_, err = w.dst.PutObject(w.ctx, &s3.PutObjectInput{Bucket: &w.dstBucket, Key: aws.String("b"), Body: strings.NewReader("tampered")})
	must(t, err)
	vs, _ := w.destVersions("many/007")
	_, err = w.dst.DeleteObject(w.ctx, &s3.DeleteObjectInput{Bucket: &w.dstBucket, Key: aws.String("many/007"), VersionId: vs[0].VersionId})
	must(t, err)
	out, _, code = w.cli("verify")
	if code != 1 || !strings.Contains(out, "current    b") || !strings.Contains(out, "missing    many/007") {
		t.Fatalf("verify on a damaged destination: exit %d\n%s", code, out)
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 1 {
		t.Errorf("verify listed more than the damage:\n%s", out)
	}
	// A destination key the source does not have is reported as extra,
	// which is not a difference.
	_, err = w.dst.PutObject(w.ctx, &s3.PutObjectInput{Bucket: &w.dstBucket, Key: aws.String("stray"), Body: strings.NewReader("s")})
	must(t, err)
	out, _, _ = w.cli("verify")
	if !strings.Contains(out, "extra      stray") {
		t.Errorf("verify does not report a destination key with no source key:\n%s", out)
	}

	// Repair with the daemon running: backfill goes through it.
	d := w.start()
	out, errOut, code = w.cli("backfill")
	if code != 0 {
		t.Fatalf("backfill through the daemon: exit %d\n%s\n%s", code, out, errOut)
	}
	out, _, code = w.cli("verify")
	if code != 0 {
		t.Fatalf("verify after repair: exit %d\n%s", code, out)
	}
	if body, _ := w.getDest("b", ""); string(body) != "b1" {
		t.Fatalf("b is %q after repair", body)
	}
	d.stop()
}
