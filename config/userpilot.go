package config

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/pgpilot/pgpilot/userpilot"
)

// userpilotKeys are the keys of the userpilot: section.
var userpilotKeys = []string{"api_key", "api_key_file", "endpoint", "rate_limit", "bulk_rate"}

func (p *parser) userpilot(s section) Userpilot {
	var up Userpilot
	key, haveKey := p.value(s, "api_key")
	file, haveFile := p.value(s, "api_key_file")
	switch {
	case haveKey && haveFile:
		p.fail(file.line, s.keyOf("api_key_file"), "both api_key and api_key_file are set", "keep one")
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
	if v, ok := p.optional(s, "endpoint", userpilot.USEndpoint); ok {
		endpoint, pr := parseEndpoint(v)
		if pr.msg != "" {
			p.fail(v.line, s.keyOf("endpoint"), pr.msg, pr.fix)
		}
		up.Endpoint = endpoint
	}
	if v, ok := p.optional(s, "rate_limit", strconv.FormatFloat(userpilot.DefaultRateLimit, 'g', -1, 64)); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(v.text), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
			p.fail(v.line, s.keyOf("rate_limit"), v.show()+" is not a positive number of requests per second",
				"write e.g. rate_limit: 10 (Userpilot allows 600 requests per minute per API key)")
		}
		up.RateLimit = f
	}
	if v, ok := p.optional(s, "bulk_rate", strconv.FormatFloat(userpilot.DefaultBulkRate, 'g', -1, 64)); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(v.text), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			p.fail(v.line, s.keyOf("bulk_rate"), v.show()+" is not a number of records per second",
				"write e.g. bulk_rate: 20 (Userpilot's bulk jobs process 1,200 to 1,800 records per minute), or 0 to send everything on the real-time endpoint")
		}
		up.BulkRate = f
	}
	return up
}

// parseEndpoint turns the endpoint setting into a base URL. Plain http is
// refused except on this machine because the API key travels in a header.
func parseEndpoint(v scalar) (string, problem) {
	switch strings.ToLower(strings.TrimSpace(v.text)) {
	case "us":
		return userpilot.USEndpoint, problem{}
	case "eu":
		return userpilot.EUEndpoint, problem{}
	}
	const fix = "write us, eu, or your account's base URL such as https://analytex.userpilot.io"
	u, err := url.Parse(strings.TrimSpace(v.text))
	if err != nil || !u.IsAbs() || u.Host == "" {
		return "", problem{v.show() + " is not an absolute URL", fix}
	}
	switch {
	case u.User != nil:
		return "", problem{v.show() + " holds credentials", "remove them, the key goes in userpilot.api_key"}
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return "", problem{v.show() + " has a query or fragment", fix}
	case u.Path != "" && u.Path != "/":
		return "", problem{fmt.Sprintf("%s has the path %q; pgpilot adds the API paths itself", v.show(), u.Path), fix}
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		// A stand-in server on this machine: the key never leaves it.
	case u.Scheme == "http":
		return "", problem{v.show() + " uses http; the API key travels in a request header and must be encrypted, so only https is allowed (http only for localhost and 127.0.0.1 test servers)",
			"write https://"}
	default:
		return "", problem{fmt.Sprintf("%s uses the scheme %q", v.show(), u.Scheme), fix}
	}
	return u.Scheme + "://" + u.Host, problem{}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
