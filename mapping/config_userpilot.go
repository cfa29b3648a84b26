package mapping

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// userpilotKeys are the keys of the userpilot: section.
var userpilotKeys = []string{"api_key", "api_key_file", "endpoint", "rate_limit", "bulk_rate"}

func (p *parser) userpilot(s section) Userpilot {
	var up Userpilot
	key, haveKey := p.value(s, "api_key")
	file, haveFile := p.value(s, "api_key_file")
	switch {
	case haveKey && haveFile:
		p.fail(file.line, s.keyOf("api_key_file"), "both api_key and api_key_file are set; fix: keep one")
	case haveFile:
		// Read by Load, after parsing: Parse does no I/O.
		up.APIKeyFile, up.APIKeyFileLine = p.resolveDir(strings.TrimSpace(file.text)), file.line
	default:
		if v, ok := p.required(s, "api_key", "write api_key: ${USERPILOT_API_KEY}, or api_key_file: /path/to/secret"); ok {
			p.secrets = append(p.secrets, v.text)
			up.APIKey = v.text
			if len(v.fromEnv) == 0 {
				p.literalSecrets = append(p.literalSecrets, "userpilot.api_key")
			}
		}
		_ = key
	}
	if v, ok := p.optional(s, "endpoint", DefaultEndpoint); ok {
		endpoint, msg := parseEndpoint(v)
		if msg != "" {
			p.fail(v.line, s.keyOf("endpoint"), "%s", msg)
		}
		up.Endpoint = endpoint
	}
	if v, ok := p.optional(s, "rate_limit", strconv.FormatFloat(DefaultRateLimit, 'g', -1, 64)); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(v.text), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
			p.fail(v.line, s.keyOf("rate_limit"), "%s is not a positive number of requests per second; fix: write e.g. rate_limit: 10 (Userpilot allows 600 requests per minute per API key)", v.show())
		}
		up.RateLimit = f
	}
	if v, ok := p.optional(s, "bulk_rate", strconv.FormatFloat(DefaultBulkRate, 'g', -1, 64)); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(v.text), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			p.fail(v.line, s.keyOf("bulk_rate"), "%s is not a number of records per second; fix: write e.g. bulk_rate: 20 (Userpilot's bulk jobs process 1,200 to 1,800 records per minute), or 0 to send everything on the real-time endpoint", v.show())
		}
		up.BulkRate = f
	}
	return up
}

// parseEndpoint turns the endpoint setting into a base URL. Plain http is
// refused except on this machine because the API key travels in a header.
func parseEndpoint(v scalar) (string, string) {
	switch strings.ToLower(strings.TrimSpace(v.text)) {
	case "us":
		return USEndpoint, ""
	case "eu":
		return EUEndpoint, ""
	}
	const fix = "fix: write us, eu, or your account's base URL such as https://analytex.userpilot.io"
	u, err := url.Parse(strings.TrimSpace(v.text))
	if err != nil || !u.IsAbs() || u.Host == "" {
		return "", fmt.Sprintf("%s is not an absolute URL; %s", v.show(), fix)
	}
	switch {
	case u.User != nil:
		return "", fmt.Sprintf("%s holds credentials; fix: remove them, the key goes in userpilot.api_key", v.show())
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return "", fmt.Sprintf("%s has a query or fragment; %s", v.show(), fix)
	case u.Path != "" && u.Path != "/":
		return "", fmt.Sprintf("%s has the path %q; pgpilot adds the API paths itself; %s", v.show(), u.Path, fix)
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		// A stand-in server on this machine: the key never leaves it.
	case u.Scheme == "http":
		return "", fmt.Sprintf("%s uses http; the API key travels in a request header and must be encrypted, so only https is allowed (http only for localhost and 127.0.0.1 test servers); fix: write https://", v.show())
	default:
		return "", fmt.Sprintf("%s uses the scheme %q; %s", v.show(), u.Scheme, fix)
	}
	return u.Scheme + "://" + u.Host, ""
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
