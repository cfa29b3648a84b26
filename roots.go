package main

// Mozilla's trust roots, compiled in. Go uses them only when the system
// has none (a FROM scratch image, a bare host without ca-certificates), so
// the same binary verifies Userpilot's certificate everywhere, and an image
// never carries the build machine's CA bundle (which may hold private CAs).
import _ "golang.org/x/crypto/x509roots/fallback"
