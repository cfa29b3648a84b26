package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// skipImageEnv lets a developer without a container engine run the rest
// of the suite. CI never skips: setup.sh installs podman there.
const skipImageEnv = "PGPILOT_SKIP_IMAGE_TEST"

// TestImageStreamsStopsOnSigtermAndResumesFromItsVolume builds the image
// with scripts/image.sh and runs it as an operator would: host network,
// the config mounted read-only, secrets in the environment, state.dir on a
// named volume. Changes arrive; SIGTERM (engine stop) exits 0; a new
// container on the same volume resumes from the checkpoint, sending only
// the change made since.
func TestImageStreamsStopsOnSigtermAndResumesFromItsVolume(t *testing.T) {
	t.Parallel()
	engine := containerEngine(t)
	image := buildImage(t)
	runFlags := engineRunFlags(t, engine, image)
	checkImageConfig(t, engine, image)

	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))

	// The image's own default command reads /etc/pgpilot/pgpilot.yaml.
	listen := freeAddr(t)
	cfg := fmt.Sprintf(`postgres:
  url: ${DATABASE_URL}
  slot: %[1]s
  publication: %[1]s
userpilot:
  api_key: ${USERPILOT_API_KEY}
  endpoint: %[2]q
  rate_limit: 2000
state:
  dir: /var/lib/pgpilot
http:
  listen: %[3]s
`, workload.SlotName(e.url), e.up.URL(), listen) + workload.Mapping
	cfgPath := filepath.Join(t.TempDir(), "pgpilot.yaml")
	// Readable by the image's user (65532); it holds no secret.
	require.NoError(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))
	require.NoError(t, os.Chmod(cfgPath, 0o644))

	volume := "pgpilot-e2e-" + strings.ToLower(workload.SlotName(e.url))
	_ = exec.Command(engine, "volume", "rm", "--force", volume).Run()
	out, err := exec.Command(engine, "volume", "create", volume).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { _ = exec.Command(engine, "volume", "rm", "--force", volume).Run() })
	out, err = exec.Command(engine, "volume", "inspect", "--format", "{{.Mountpoint}}", volume).Output()
	require.NoError(t, err, "%s", out)
	stateDir := strings.TrimSpace(string(out))

	start := func(name string) *container {
		args := append([]string{"run", "--rm", "--name", name, "--network", "host",
			"--volume", volume + ":/var/lib/pgpilot",
			"--volume", cfgPath + ":/etc/pgpilot/pgpilot.yaml:ro",
			"--env", "DATABASE_URL", "--env", "USERPILOT_API_KEY"}, runFlags...)
		c := startContainer(t, engine, name, append(args, image),
			"DATABASE_URL="+e.url, "USERPILOT_API_KEY="+apiKey)
		return c
	}

	name := "pgpilot-e2e-" + strings.ToLower(workload.SlotName(e.url))
	c := start(name + "-1")
	e.converge(90 * time.Second)
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'pro' WHERE id <= 3`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	assert.Equal(t, 200, status(httpGet("http://"+listen+"/healthz")))
	require.Eventually(t, func() bool { return status(httpGet("http://"+listen+"/readyz")) == 200 },
		30*time.Second, 100*time.Millisecond, "/readyz once streaming")

	code := c.stop(t)
	require.Equal(t, 0, code, "SIGTERM: drain, checkpoint, exit 0\n%s", c.out.String())

	// The checkpoint is on the volume, written by the image's user.
	cp, ok, err := state.ReadCheckpoint(stateDir)
	require.NoError(t, err)
	require.True(t, ok, "a checkpoint in the volume %s", stateDir)
	assert.Equal(t, state.InitialSyncDone, cp.InitialSync)
	fi, err := os.Stat(filepath.Join(stateDir, state.CheckpointFile))
	require.NoError(t, err)
	assert.Equal(t, uint32(65532), fi.Sys().(*syscall.Stat_t).Uid, "written by uid 65532, not root")

	before := e.up.IdentifyRequests()
	c = start(name + "-2")
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'enterprise' WHERE id = 7`)
	require.NoError(t, err)
	e.converge(90 * time.Second)
	assert.Equal(t, before+1, e.up.IdentifyRequests(), "resumed from the checkpoint: only the new change is sent")
	assert.Equal(t, 0, c.stop(t), "%s", c.out.String())
	cp2, _, err := state.ReadCheckpoint(stateDir)
	require.NoError(t, err)
	assert.Greater(t, cp2.LSN, cp.LSN, "the checkpoint moved on, from where it was")
}

// checkImageConfig checks what the Dockerfile promises and a run cannot
// show: the entrypoint, the user, the declared volume, the OCI labels.
func checkImageConfig(t *testing.T, engine, image string) {
	t.Helper()
	out, err := exec.Command(engine, "image", "inspect", "--format", "{{json .Config}}", image).Output()
	require.NoError(t, err)
	var cfg struct {
		User       string
		Entrypoint []string
		Volumes    map[string]struct{}
		Labels     map[string]string
	}
	require.NoError(t, json.Unmarshal(out, &cfg), "%s", out)
	assert.Equal(t, "65532:65532", cfg.User)
	assert.Equal(t, []string{"/pgpilot"}, cfg.Entrypoint)
	assert.Contains(t, cfg.Volumes, "/var/lib/pgpilot")
	for _, l := range []string{"title", "description", "version", "revision", "created", "source"} {
		assert.NotEmpty(t, cfg.Labels["org.opencontainers.image."+l], "label org.opencontainers.image.%s", l)
	}
	assert.Equal(t, strings.TrimPrefix(image, "pgpilot:"), cfg.Labels["org.opencontainers.image.version"])

	// The file system: the binary, the state directory owned by the user
	// (docker gives a new named volume the owner of the image's directory;
	// podman chowns it to the user either way), and nothing else: no shell.
	name := "pgpilot-e2e-export-" + strings.ReplaceAll(strings.TrimPrefix(image, "pgpilot:"), ".", "-")
	_ = exec.Command(engine, "rm", "--force", name).Run()
	out, err = exec.Command(engine, "create", "--name", name, image).CombinedOutput()
	require.NoError(t, err, "%s", out)
	defer exec.Command(engine, "rm", "--force", name).Run()
	export := exec.Command(engine, "export", name)
	pipe, err := export.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, export.Start())
	files := map[string]*tar.Header{}
	tr := tar.NewReader(pipe)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		files[strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")] = h
	}
	require.NoError(t, export.Wait())
	bin := files["pgpilot"]
	require.NotNil(t, bin, "/pgpilot in the image: %v", files)
	assert.True(t, bin.Typeflag == tar.TypeReg && bin.Mode&0o111 != 0, "/pgpilot is an executable file")
	dir := files["var/lib/pgpilot"]
	require.NotNil(t, dir, "/var/lib/pgpilot in the image")
	assert.Equal(t, 65532, dir.Uid, "/var/lib/pgpilot owned by the image's user")
	for name := range files {
		assert.False(t, strings.HasPrefix(name, "bin") || strings.HasPrefix(name, "usr") || strings.HasPrefix(name, "lib"),
			"nothing but pgpilot's own files: %s", name)
	}
}

// containerEngine is the engine scripts/image.sh picks: a docker that
// answers, else podman; CONTAINER_ENGINE overrides.
func containerEngine(t *testing.T) string {
	t.Helper()
	if e := os.Getenv("CONTAINER_ENGINE"); e != "" {
		return e
	}
	if _, err := exec.LookPath("docker"); err == nil && exec.Command("docker", "info").Run() == nil {
		return "docker"
	}
	if _, err := exec.LookPath("podman"); err == nil {
		return "podman"
	}
	const why = "neither a working docker nor podman is installed: run ./scripts/setup.sh test (it installs podman and runc)"
	if os.Getenv(skipImageEnv) == "1" && os.Getenv("CI") == "" {
		t.Skipf("%s; skipped because %s=1", why, skipImageEnv)
	}
	t.Fatalf("%s (or, on a machine that cannot run containers, set %s=1 to skip this test outside CI)", why, skipImageEnv)
	return ""
}

var imageOnce struct {
	sync.Once
	ref string
	err error
}

// buildImage runs scripts/image.sh once per test binary and returns the
// reference it printed last.
func buildImage(t *testing.T) string {
	t.Helper()
	imageOnce.Do(func() {
		cmd := exec.Command("./scripts/image.sh")
		cmd.Dir = ".."
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			imageOnce.err = fmt.Errorf("scripts/image.sh: %w\n%s%s", err, out, stderr.String())
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		imageOnce.ref = lines[len(lines)-1]
	})
	require.NoError(t, imageOnce.err)
	require.True(t, strings.HasPrefix(imageOnce.ref, "pgpilot:"), "image.sh's last line is the image: %q", imageOnce.ref)
	return imageOnce.ref
}

// engineRunFlags finds the flags this machine needs to run a container.
// Where the runtime may not raise resource limits (an unprivileged
// sandbox: "error setting rlimit"), runc with limits within the current
// ones works: detect that, and fail, not skip, when nothing works.
func engineRunFlags(t *testing.T, engine, image string) []string {
	t.Helper()
	try := func(flags ...string) (string, error) {
		args := append(append([]string{"run", "--rm"}, flags...), image, "version")
		out, err := exec.Command(engine, args...).CombinedOutput()
		return string(out), err
	}
	out, err := try()
	if err == nil {
		require.Contains(t, out, "pgpilot ")
		return nil
	}
	limits := []string{"--ulimit", "nofile=10000:10000", "--ulimit", "nproc=4096:4096"}
	if engine == "podman" {
		limits = append([]string{"--runtime", "runc"}, limits...)
	}
	out2, err2 := try(limits...)
	require.NoError(t, err2, "%s run fails:\n%s\nand with %v too:\n%s", engine, out, limits, out2)
	t.Logf("%s cannot set its default resource limits here (%s); running with %v",
		engine, strings.TrimSpace(lastLine(out)), limits)
	return limits
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}

// container is a foreground `engine run`.
type container struct {
	engine, name string
	cmd          *exec.Cmd
	out          *syncBuffer
	done         chan struct{}
}

func startContainer(t *testing.T, engine, name string, args []string, environ ...string) *container {
	t.Helper()
	c := &container{engine: engine, name: name, out: &syncBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command(engine, args...)
	c.cmd.Env = append(os.Environ(), environ...)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	require.NoError(t, c.cmd.Start())
	go func() {
		_ = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = exec.Command(engine, "rm", "--force", name).Run()
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("container %s output:\n%s", name, tail(c.out.String(), 4000))
		}
	})
	return c
}

// stop is what an orchestrator does: SIGTERM, then SIGKILL after a grace
// period (60 s here, far above pgpilot's 10 s --shutdown-grace). It
// returns the container's exit code.
func (c *container) stop(t *testing.T) int {
	t.Helper()
	out, err := exec.Command(c.engine, "stop", "--time", "60", c.name).CombinedOutput()
	require.NoError(t, err, "%s stop: %s", c.engine, out)
	select {
	case <-c.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("%s run did not return after the container stopped", c.engine)
	}
	return c.cmd.ProcessState.ExitCode()
}

func status(code int, _ string) int { return code }
