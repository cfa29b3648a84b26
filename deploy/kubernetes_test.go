package deploy

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/metrics"
)

// manifests is one file of deploy/kubernetes, decoded.
type manifests struct {
	file        string
	configMaps  map[string]*corev1.ConfigMap
	claims      map[string]*corev1.PersistentVolumeClaim
	deployments []*appsv1.Deployment
}

// documentSeparator splits a multi-document YAML file.
var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeManifests decodes every document of file strictly into its
// Kubernetes API type: an unknown or misspelt field, a wrong type, a kind
// these tests do not know, all fail.
func decodeManifests(t *testing.T, file string) *manifests {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	m := &manifests{file: file, configMaps: map[string]*corev1.ConfigMap{}, claims: map[string]*corev1.PersistentVolumeClaim{}}
	for i, doc := range documentSeparator.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		require.NoError(t, yaml.Unmarshal([]byte(doc), &tm), "%s document %d", file, i+1)
		strict := func(into any) {
			t.Helper()
			require.NoError(t, yaml.UnmarshalStrict([]byte(doc), into), "%s document %d (%s)", file, i+1, tm.Kind)
		}
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ConfigMap":
			var cm corev1.ConfigMap
			strict(&cm)
			m.configMaps[cm.Name] = &cm
		case "v1 PersistentVolumeClaim":
			var pvc corev1.PersistentVolumeClaim
			strict(&pvc)
			m.claims[pvc.Name] = &pvc
		case "apps/v1 Deployment":
			var d appsv1.Deployment
			strict(&d)
			m.deployments = append(m.deployments, &d)
		default:
			t.Fatalf("%s document %d: %q %q is not a kind these tests check; add it", file, i+1, tm.APIVersion, tm.Kind)
		}
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func TestStrictDecodingRefusesAnUnknownField(t *testing.T) {
	var d appsv1.Deployment
	err := yaml.UnmarshalStrict([]byte("apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 1\n"), &d)
	require.Error(t, err, "a misspelt field must fail, or the manifest tests prove nothing")
	assert.Contains(t, err.Error(), "replica")
}

func TestEveryKubernetesManifestIsChecked(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	require.NoError(t, err)
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	assert.ElementsMatch(t, []string{"sidecar.yaml", "standalone.yaml"}, names,
		"a new manifest needs its own test below")
}

// TestSidecarManifest: pgpilot as a native sidecar (Kubernetes ≥ 1.29).
func TestSidecarManifest(t *testing.T) {
	m := decodeManifests(t, filepath.Join("kubernetes", "sidecar.yaml"))
	require.Len(t, m.deployments, 1)
	d := m.deployments[0]
	spec := d.Spec.Template.Spec
	var c *corev1.Container
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == "pgpilot" {
			c = &spec.InitContainers[i]
		}
	}
	require.NotNil(t, c, "pgpilot is an initContainers entry")
	require.NotNil(t, c.RestartPolicy, "a native sidecar: restartPolicy Always")
	assert.Equal(t, corev1.ContainerRestartPolicyAlways, *c.RestartPolicy)
	assert.NotEmpty(t, spec.Containers, "beside the app's own containers")
	for _, app := range spec.Containers {
		assert.NotEqual(t, "pgpilot", app.Name, "pgpilot runs as the sidecar, not as an app container")
	}
	// One pgpilot per slot and state volume.
	require.NotNil(t, d.Spec.Replicas)
	assert.Equal(t, int32(1), *d.Spec.Replicas)
	assert.Equal(t, appsv1.RecreateDeploymentStrategyType, d.Spec.Strategy.Type)
	checkPgpilotPod(t, m, d, c)
}

// TestStandaloneManifest: pgpilot on its own, one replica, Recreate.
func TestStandaloneManifest(t *testing.T) {
	m := decodeManifests(t, filepath.Join("kubernetes", "standalone.yaml"))
	require.Len(t, m.deployments, 1)
	d := m.deployments[0]
	require.NotNil(t, d.Spec.Replicas)
	assert.Equal(t, int32(1), *d.Spec.Replicas)
	assert.Equal(t, appsv1.RecreateDeploymentStrategyType, d.Spec.Strategy.Type,
		"the new pod must not start before the old one let go of the ReadWriteOnce volume")
	require.Len(t, d.Spec.Template.Spec.Containers, 1)
	assert.Empty(t, d.Spec.Template.Spec.InitContainers)
	checkPgpilotPod(t, m, d, &d.Spec.Template.Spec.Containers[0])
}

// checkPgpilotPod checks that the pgpilot container c of d agrees with
// pgpilot itself: its flags, its config loader, its HTTP paths, its image.
func checkPgpilotPod(t *testing.T, m *manifests, d *appsv1.Deployment, c *corev1.Container) {
	t.Helper()
	spec := d.Spec.Template.Spec
	assert.Regexp(t, `(^|/)pgpilot:[\w][\w.-]*$`, c.Image, "the image scripts/image.sh builds")
	require.Empty(t, c.Command, "the image's entrypoint is /pgpilot; args are its arguments")
	args := runArgs(t, c.Args)
	grace := shutdownGrace(t, args)

	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	// mountOf is the mount (and its volume) holding file.
	mountOf := func(file string) (corev1.VolumeMount, corev1.Volume) {
		t.Helper()
		for _, vm := range c.VolumeMounts {
			if strings.HasPrefix(file, strings.TrimSuffix(vm.MountPath, "/")+"/") || file == vm.MountPath {
				v, ok := volumes[vm.Name]
				require.True(t, ok, "volume %q is mounted but not defined", vm.Name)
				return vm, v
			}
		}
		t.Fatalf("no volume mounted at %s (mounts: %+v)", file, c.VolumeMounts)
		return corev1.VolumeMount{}, corev1.Volume{}
	}

	// The config: a key of a ConfigMap in this file, mounted read-only.
	configPath, ok := args["config"]
	require.True(t, ok, "--config")
	vm, v := mountOf(configPath)
	assert.True(t, vm.ReadOnly, "the config mount is read-only")
	require.NotNil(t, v.ConfigMap, "--config %s is in a ConfigMap volume", configPath)
	cm, ok := m.configMaps[v.ConfigMap.Name]
	require.True(t, ok, "ConfigMap %q is defined in %s", v.ConfigMap.Name, m.file)
	key := strings.TrimPrefix(configPath, strings.TrimSuffix(vm.MountPath, "/")+"/")
	text, ok := cm.Data[key]
	require.True(t, ok, "ConfigMap %s has the key %q that --config names", cm.Name, key)

	// Every ${VAR} it uses is set on the container; the database URL comes
	// from a Secret, never written in the manifest.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	refs := envRefs(text)
	require.Contains(t, refs, "DATABASE_URL")
	for _, name := range refs {
		e, ok := env[name]
		require.True(t, ok, "the config uses ${%s}, which the container does not set", name)
		if name == "DATABASE_URL" {
			require.NotNil(t, e.ValueFrom, "DATABASE_URL from a Secret")
			require.NotNil(t, e.ValueFrom.SecretKeyRef, "DATABASE_URL through secretKeyRef")
			assert.Empty(t, e.Value)
		}
	}
	lookup := func(name string) (string, bool) {
		if _, ok := env[name]; !ok {
			return "", false
		}
		if name == "DATABASE_URL" {
			return "postgres://pgpilot:secret@db.internal:5432/app?sslmode=verify-full", true
		}
		return "x", true
	}
	cfg, err := config.Parse(configPath, []byte(text), lookup)
	require.NoError(t, err, "the ConfigMap's config, as pgpilot reads it")

	// state.dir: a writable mount of this file's PersistentVolumeClaim.
	vm, v = mountOf(cfg.State.Dir)
	assert.Equal(t, path.Clean(vm.MountPath), cfg.State.Dir, "state.dir is the volume's mount point")
	assert.False(t, vm.ReadOnly, "state.dir is writable")
	require.NotNil(t, v.PersistentVolumeClaim, "state.dir on a PersistentVolumeClaim, so a restart resumes")
	assert.Contains(t, m.claims, v.PersistentVolumeClaim.ClaimName, "the claim is defined in %s", m.file)

	// The API key: api_key_file is an item of the Secret the database URL
	// comes from, mounted read-only and readable by pgpilot's group.
	require.NotEmpty(t, cfg.Userpilot.APIKeyFile, "the API key through api_key_file")
	vm, v = mountOf(cfg.Userpilot.APIKeyFile)
	assert.True(t, vm.ReadOnly)
	require.NotNil(t, v.Secret, "api_key_file is in a Secret volume")
	assert.Equal(t, env["DATABASE_URL"].ValueFrom.SecretKeyRef.Name, v.Secret.SecretName, "one Secret holds both")
	item := strings.TrimPrefix(cfg.Userpilot.APIKeyFile, strings.TrimSuffix(vm.MountPath, "/")+"/")
	found, secretKey := false, ""
	for _, it := range v.Secret.Items {
		if it.Path == item {
			found, secretKey = true, it.Key
		}
	}
	assert.True(t, found, "the Secret volume projects %q (items %+v)", item, v.Secret.Items)
	if v.Secret.DefaultMode != nil {
		assert.NotZero(t, *v.Secret.DefaultMode&0o040, "group-readable: pgpilot reads it through fsGroup")
	}

	// And pgpilot's own loader, on a copy whose secret mount is a temporary
	// folder holding a key: reads the key file, and warns of nothing.
	secretDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(secretDir, item), []byte("key-from-the-secret\n"), 0o440))
	cfgDir := t.TempDir()
	copyPath := filepath.Join(cfgDir, key)
	require.NoError(t, os.WriteFile(copyPath, []byte(strings.ReplaceAll(text, vm.MountPath, secretDir)), 0o644))
	for _, name := range refs {
		val, _ := lookup(name)
		t.Setenv(name, val)
	}
	loaded, err := config.Load(copyPath)
	require.NoError(t, err, "config.Load of the ConfigMap's config")
	assert.Equal(t, "key-from-the-secret", loaded.Userpilot.APIKey)
	assert.Empty(t, loaded.Warnings)

	// HTTP: http.listen's port is the container port the probes use, and
	// the probes' paths are the ones pgpilot serves.
	require.NotEmpty(t, cfg.HTTP.Listen, "http.listen, for the probes")
	_, listenPort, ok := strings.Cut(cfg.HTTP.Listen, ":")
	require.True(t, ok)
	assert.NotContains(t, []string{"127.0.0.1", "localhost"}, strings.Split(cfg.HTTP.Listen, ":")[0],
		"the kubelet probes the pod's IP: listen on every interface")
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
		assert.Equal(t, listenPort, itoa(p.ContainerPort), "container port %s is http.listen's", p.Name)
	}
	handler := metrics.New(metrics.Options{}).Handler()
	probe := func(name string, p *corev1.Probe, path string, want int) {
		t.Helper()
		require.NotNil(t, p, "%s probe", name)
		require.NotNil(t, p.HTTPGet, "%s probe over HTTP", name)
		assert.Equal(t, path, p.HTTPGet.Path, "%s probe path", name)
		port := p.HTTPGet.Port.IntVal
		if p.HTTPGet.Port.StrVal != "" {
			var ok bool
			port, ok = ports[p.HTTPGet.Port.StrVal]
			require.True(t, ok, "%s probe's port %q is a container port", name, p.HTTPGet.Port.StrVal)
		}
		assert.Equal(t, listenPort, itoa(port), "%s probe on http.listen's port", name)
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p.HTTPGet.Path, nil))
		assert.Equal(t, want, rec.Code, "pgpilot answers %s on a fresh start", p.HTTPGet.Path)
	}
	probe("liveness", c.LivenessProbe, "/healthz", http.StatusOK)
	probe("readiness", c.ReadinessProbe, "/readyz", http.StatusServiceUnavailable) // not streaming yet

	// Stopping: the kubelet waits longer than pgpilot drains.
	require.NotNil(t, spec.TerminationGracePeriodSeconds)
	period := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	assert.Greater(t, period, grace+afterGrace, "terminationGracePeriodSeconds above --shutdown-grace %s + %s", grace, afterGrace)

	// Security: the container's settings, or the pod's where Kubernetes
	// lets them be inherited.
	sc := c.SecurityContext
	require.NotNil(t, sc)
	psc := spec.SecurityContext
	require.NotNil(t, psc)
	runAsNonRoot := sc.RunAsNonRoot
	if runAsNonRoot == nil {
		runAsNonRoot = psc.RunAsNonRoot
	}
	require.NotNil(t, runAsNonRoot)
	assert.True(t, *runAsNonRoot, "runAsNonRoot")
	uid := sc.RunAsUser
	if uid == nil {
		uid = psc.RunAsUser
	}
	if uid != nil {
		assert.Equal(t, imageUser(t), *uid, "the Dockerfile's USER")
	}
	require.NotNil(t, psc.FSGroup, "fsGroup: the state volume writable by pgpilot")
	assert.Equal(t, imageUser(t), *psc.FSGroup)
	require.NotNil(t, sc.ReadOnlyRootFilesystem)
	assert.True(t, *sc.ReadOnlyRootFilesystem, "readOnlyRootFilesystem: pgpilot writes only state.dir")
	require.NotNil(t, sc.AllowPrivilegeEscalation)
	assert.False(t, *sc.AllowPrivilegeEscalation)
	require.NotNil(t, sc.Capabilities)
	assert.Contains(t, sc.Capabilities.Drop, corev1.Capability("ALL"))
	assert.Empty(t, sc.Capabilities.Add)
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	require.NotNil(t, seccomp)
	assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, seccomp.Type)

	// Resources, from the measured memory (docs/performance.md,
	// "Memory"): peaks under 60 MB, so a request of at least 108 MB keeps
	// room for the Go heap's goal; the limit at least the snapshot
	// benchmark's bound (160 MB).
	req, lim := c.Resources.Requests, c.Resources.Limits
	require.Contains(t, req, corev1.ResourceMemory)
	require.Contains(t, lim, corev1.ResourceMemory)
	require.Contains(t, req, corev1.ResourceCPU)
	assert.GreaterOrEqual(t, req.Memory().Value(), int64(108e6), "memory request covers the measured peak")
	assert.GreaterOrEqual(t, lim.Memory().Value(), int64(160e6), "memory limit at least the benchmark's bound")
	assert.GreaterOrEqual(t, lim.Memory().Value(), req.Memory().Value())

	// docs/deploy.md's command makes the Secret these manifests read.
	secret := env["DATABASE_URL"].ValueFrom.SecretKeyRef
	for _, want := range []string{"kubectl create secret generic " + secret.Name, secret.Key + "=", secretKey + "="} {
		assert.True(t, strings.Contains(doc(t, "docs/deploy.md"), want), "docs/deploy.md's Kubernetes sections have %q", want)
	}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }
