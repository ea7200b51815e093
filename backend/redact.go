package backend

import (
	"net/url"
	"strings"
)

// RedactURL returns raw as it may appear in logs, errors and metrics:
// scheme, host and path only. Userinfo goes whole (a token may stand in the
// user name), and so do the query, where signed URLs and mirrors carry
// credentials (sig, token, X-Amz-Signature, X-Amz-Credential, ...), and the
// fragment: a list of credential parameters would miss the next one. A URL
// that does not parse, or whose path may hold a userinfo that did not parse
// as one, is not shown at all.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL, not shown)"
	}
	if strings.Contains(u.Opaque, "@") || u.Host == "" && strings.Contains(u.Path, "@") {
		return "(URL not shown: it may hold credentials)"
	}
	switch {
	case u.Opaque != "":
		return u.Scheme + ":" + u.Opaque
	case u.Scheme == "":
		return u.Host + u.EscapedPath()
	}
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}
