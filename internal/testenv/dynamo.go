package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Dynamo is a running dynalite server: the DynamoDB API in memory, for the
// cluster mode's tests. It has conditional writes, queries and secondary
// indexes, but no transactions, TTL or streams.
type Dynamo struct {
	// Endpoint is the server's URL; any credentials and the region
	// us-east-1 are accepted.
	Endpoint string
	cmd      *exec.Cmd
	done     chan struct{}
}

// dynaliteServer is what cli.js does, with one difference: dynalite 4.0.0
// rethrows the error of a request that its client dropped half way
// ("aborted"), and that ends the process. Tests that cut connections (a
// fault proxy, a request's deadline) would take the server down with the
// node under test; such an error is logged and ignored here. Tables stay
// CREATING for a few milliseconds rather than half a second: tests
// create many.
const dynaliteServer = `
const dynalite = require('dynalite');
process.on('uncaughtException', (err) => {
  if (err && (err.code === 'ECONNRESET' || err.message === 'aborted')) {
    console.error('a client dropped a request half way:', err.message);
    return;
  }
  console.error(err);
  process.exit(1);
});
const server = dynalite({createTableMs: 20, deleteTableMs: 20, updateTableMs: 20});
server.listen(Number(process.env.DYNALITE_PORT), '127.0.0.1', () => {
  console.log('Dynalite listening at: http://127.0.0.1:' + server.address().port);
});
`

// StartDynamo launches dynalite on a free loopback port, logging into dir
// (which must exist).
func StartDynamo(dir string) (*Dynamo, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	cli := filepath.Join(root, ".testenv", "dynalite", "node_modules", "dynalite", "cli.js")
	if _, err := os.Stat(cli); err != nil {
		return nil, fmt.Errorf("%w (dynalite missing)", ErrNotInstalled)
	}
	if _, err := exec.LookPath("node"); err != nil {
		return nil, fmt.Errorf("%w (node not on PATH)", ErrNotInstalled)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("node", "-e", dynaliteServer)
	cmd.Dir = filepath.Join(root, ".testenv", "dynalite")
	cmd.Env = append(os.Environ(), fmt.Sprintf("DYNALITE_PORT=%d", port))
	logf, err := os.Create(filepath.Join(dir, "dynalite.log"))
	if err != nil {
		return nil, err
	}
	watch := &readyWatch{w: logf, ready: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = watch, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start dynalite: %w", err)
	}
	d := &Dynamo{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(d.done) }()
	select {
	case <-watch.ready:
		return d, nil
	case <-d.done:
		return nil, errors.New("dynalite exited before it was ready (see dynalite.log)")
	case <-time.After(30 * time.Second):
		d.Close()
		return nil, errors.New("dynalite did not start within 30s")
	}
}

// Close stops the server.
func (d *Dynamo) Close() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// readyWatch passes the server's output to its log and closes ready when
// the line saying it listens has gone by.
type readyWatch struct {
	w     io.Writer
	seen  []byte
	ready chan struct{}
}

func (r *readyWatch) Write(p []byte) (int, error) {
	select {
	case <-r.ready:
	default:
		r.seen = append(r.seen, p...)
		if bytes.Contains(r.seen, []byte("listening at")) {
			r.seen = nil
			close(r.ready)
		}
	}
	return r.w.Write(p)
}
