package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// docPages are the Markdown pages a reader follows links through: the
// README, the changelog and everything under docs/.
func docPages(t *testing.T) []string {
	t.Helper()
	pages := []string{"README.md", "CHANGELOG.md"}
	err := filepath.WalkDir("docs", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			pages = append(pages, path)
		}
		return err
	})
	require.NoError(t, err)
	return pages
}

var (
	mdLink     = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	inlineCode = regexp.MustCompile("`[^`]*`")
)

// TestDocsLinksResolve follows every relative link of the README and the
// docs: the file it names exists, and so does the heading its #anchor
// names (as GitHub makes anchors of headings).
func TestDocsLinksResolve(t *testing.T) {
	anchors := map[string]map[string]bool{}
	anchorsOf := func(page string) map[string]bool {
		if a, ok := anchors[page]; ok {
			return a
		}
		data, err := os.ReadFile(page)
		require.NoError(t, err)
		anchors[page] = headingAnchors(string(data))
		return anchors[page]
	}
	for _, page := range docPages(t) {
		data, err := os.ReadFile(page)
		require.NoError(t, err)
		for n, line := range proseLines(string(data)) {
			if line == "" {
				continue
			}
			for _, m := range mdLink.FindAllStringSubmatch(inlineCode.ReplaceAllString(line, ""), -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				dest := page
				if file != "" {
					dest = filepath.Clean(filepath.Join(filepath.Dir(page), file))
					fi, err := os.Stat(dest)
					if !assert.NoError(t, err, "%s:%d: link %q: no such file %s", page, n+1, target, dest) {
						continue
					}
					if fi.IsDir() {
						assert.Empty(t, anchor, "%s:%d: link %q: an anchor in a directory", page, n+1, target)
						continue
					}
				}
				if anchor == "" || !strings.HasSuffix(dest, ".md") {
					continue
				}
				assert.True(t, anchorsOf(dest)[anchor], "%s:%d: link %q: %s has no heading whose anchor is #%s", page, n+1, target, dest, anchor)
			}
		}
	}
}

// TestReadmeFitsOnAScreen keeps the README a front door: what pgpilot
// does, the two commands, a quick start and links; the rest is in docs/.
func TestReadmeFitsOnAScreen(t *testing.T) {
	data, err := os.ReadFile("README.md")
	require.NoError(t, err)
	lines := strings.Count(string(data), "\n")
	assert.LessOrEqual(t, lines, 300, "README.md has %d lines: move the detail to a page of docs/ and link it", lines)
}

// proseLines returns the page's lines with those inside fenced code
// blocks blanked, so that their line numbers stay right.
func proseLines(page string) []string {
	lines := strings.Split(page, "\n")
	inCode := false
	for i, line := range lines {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inCode = !inCode
			lines[i] = ""
			continue
		}
		if inCode {
			lines[i] = ""
		}
	}
	return lines
}

// headingAnchors are the anchors GitHub gives a page's headings: lower
// case, spaces to hyphens, punctuation other than - and _ dropped, and a
// -1, -2, … suffix for a heading met again.
func headingAnchors(page string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, line := range proseLines(page) {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		anchor := b.String()
		if n := seen[anchor]; n > 0 {
			seen[anchor] = n + 1
			anchor += "-" + strconv.Itoa(n)
		} else {
			seen[anchor] = 1
		}
		anchors[anchor] = true
	}
	return anchors
}
