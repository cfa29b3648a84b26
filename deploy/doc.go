// Package deploy holds no code: it is the tests of what this folder ships
// (the Kubernetes manifests, the systemd unit, the Prometheus alert rules),
// checked against pgpilot's own flags, config loader and metrics. It is a
// module of its own so that the Kubernetes API types it decodes the
// manifests into stay out of pgpilot's go.mod.
package deploy
