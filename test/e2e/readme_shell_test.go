//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// This file reads the shell commands of README.md: the sections by heading,
// their ```sh blocks, and in them the small part of sh that the README uses
// (quotes, $VAR, NAME=value prefixes, &&, |, a trailing &, > and a quoted
// here-document, NAME=$(pipeline)). Anything else is an error rather than a
// guess, so a README that grows a new kind of step fails until the scenario
// knows how to run it.

// mdSection returns the text under heading (a whole line such as
// "### Usage") up to the next heading of the same or a higher level. Lines in
// fenced blocks are not headings: shell comments start with # too.
func mdSection(md, heading string) (string, error) {
	level := strings.IndexFunc(heading, func(r rune) bool { return r != '#' })
	if level <= 0 {
		return "", fmt.Errorf("%q is not a heading", heading)
	}
	var out []string
	in, fenced := false, false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(line, "#") {
			l := strings.IndexFunc(line, func(r rune) bool { return r != '#' })
			switch {
			case line == heading:
				in = true
				continue
			case in && l > 0 && l <= level:
				return strings.Join(out, "\n"), nil
			}
		}
		if in {
			out = append(out, line)
		}
	}
	if !in {
		return "", fmt.Errorf("no heading %q", heading)
	}
	return strings.Join(out, "\n"), nil
}

// shBlocks returns the bodies of the ```sh blocks in text.
func shBlocks(text string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(text, "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```sh":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}

// segment is a piece of a shell word: literal text, or the name of a
// variable. Variables are expanded when the command runs, because the like
// step uses the id that the tweet step got.
type segment struct {
	text     string
	variable bool
}

type word []segment

// expand returns the word with its variables replaced. An unset variable is
// an error, where sh would quietly expand it to nothing.
func (w word) expand(vars map[string]string) (string, error) {
	var b strings.Builder
	for _, s := range w {
		if !s.variable {
			b.WriteString(s.text)
			continue
		}
		v, ok := vars[s.text]
		if !ok {
			return "", fmt.Errorf("$%s is not set", s.text)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

// literal returns the word's text if it holds no variable.
func (w word) literal() (string, bool) {
	s, err := w.expand(nil)
	return s, err == nil
}

// shCommand is one simple command.
type shCommand struct {
	env          []word // NAME=value words in front of the command
	args         []word
	stdout       word   // the file after >, if any
	heredocDelim string // the delimiter after <<, if any
	heredoc      string // the here-document's lines
}

// argv expands the command's words.
func (c shCommand) argv(vars map[string]string) ([]string, error) {
	return expandAll(c.args, vars)
}

func expandAll(ws []word, vars map[string]string) ([]string, error) {
	out := make([]string, len(ws))
	for i, w := range ws {
		s, err := w.expand(vars)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

// shLine is one command line of a block: pipelines joined by &&.
type shLine struct {
	text       string // as written, for messages
	assign     string // NAME of NAME=$(pipeline), whose output it sets
	pipelines  [][]shCommand
	background bool
}

var (
	substitution = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)=\$\((.*)\)\s*$`)
	assignment   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
)

// parseScript parses a ```sh block. Comment and empty lines are skipped, and a
// line ending in \ continues on the next.
func parseScript(block string) ([]shLine, error) {
	lines := strings.Split(block, "\n")
	var out []shLine
	for i := 0; i < len(lines); i++ {
		text := lines[i]
		for strings.HasSuffix(text, `\`) && i+1 < len(lines) {
			i++
			text = strings.TrimSuffix(text, `\`) + " " + strings.TrimSpace(lines[i])
		}
		l, err := parseLine(text)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", text, err)
		}
		if l == nil {
			continue
		}
		for p := range l.pipelines {
			for c := range l.pipelines[p] {
				cmd := &l.pipelines[p][c]
				if cmd.heredocDelim == "" {
					continue
				}
				var body []string
				for i++; i < len(lines) && lines[i] != cmd.heredocDelim; i++ {
					body = append(body, lines[i])
				}
				if i == len(lines) {
					return nil, fmt.Errorf("%q: the here-document has no closing %s", text, cmd.heredocDelim)
				}
				cmd.heredoc = strings.Join(body, "\n") + "\n"
			}
		}
		out = append(out, *l)
	}
	return out, nil
}

// parseLine parses one command line; it returns nil for a comment or an
// empty line.
func parseLine(text string) (*shLine, error) {
	l := &shLine{text: strings.TrimSpace(text)}
	body := text
	if m := substitution.FindStringSubmatch(text); m != nil {
		l.assign, body = m[1], m[2]
	}
	toks, err := lex(body)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, nil
	}
	var (
		pipeline []shCommand
		cur      shCommand
		redirect string // the operator whose word comes next
	)
	endCommand := func() error {
		if len(cur.args) == 0 {
			return errors.New("an operator without a command before it")
		}
		pipeline = append(pipeline, cur)
		cur = shCommand{}
		return nil
	}
	for i, tk := range toks {
		if tk.op == "" {
			switch redirect {
			case ">":
				cur.stdout = tk.word
			case "<<":
				d, ok := tk.word.literal()
				if !ok {
					return nil, errors.New("a here-document delimiter with a variable")
				}
				cur.heredocDelim = d
			default:
				if s, ok := tk.word.literal(); ok && len(cur.args) == 0 && assignment.MatchString(s) {
					cur.env = append(cur.env, tk.word)
				} else {
					cur.args = append(cur.args, tk.word)
				}
			}
			redirect = ""
			continue
		}
		if redirect != "" {
			return nil, fmt.Errorf("%s needs a word after it", redirect)
		}
		switch tk.op {
		case ">", "<<":
			redirect = tk.op
		case "|":
			if err := endCommand(); err != nil {
				return nil, err
			}
		case "&&":
			if err := endCommand(); err != nil {
				return nil, err
			}
			l.pipelines, pipeline = append(l.pipelines, pipeline), nil
		case "&":
			if i != len(toks)-1 {
				return nil, errors.New("& is only understood at the end of a line")
			}
			l.background = true
		default:
			return nil, fmt.Errorf("%s is not understood", tk.op)
		}
	}
	if redirect != "" {
		return nil, fmt.Errorf("%s needs a word after it", redirect)
	}
	if err := endCommand(); err != nil {
		return nil, err
	}
	l.pipelines = append(l.pipelines, pipeline)
	if l.assign != "" && l.background {
		return nil, errors.New("an assignment in the background")
	}
	return l, nil
}

type token struct {
	op   string // "" for a word
	word word
}

// lex splits a line into words and operators, as sh does for the constructs
// listed at the top of this file.
func lex(s string) ([]token, error) {
	var (
		toks   []token
		cur    word
		lit    strings.Builder
		inWord bool
	)
	flushLit := func() {
		if lit.Len() > 0 {
			cur = append(cur, segment{text: lit.String()})
			lit.Reset()
		}
	}
	endWord := func() {
		flushLit()
		if inWord {
			toks = append(toks, token{word: cur})
		}
		cur, inWord = nil, false
	}
	op := func(o string) {
		endWord()
		toks = append(toks, token{op: o})
	}
	variable := func(rs []rune) (string, int) {
		if len(rs) > 0 && rs[0] == '{' {
			end := strings.IndexRune(string(rs), '}')
			if end < 0 {
				return "", 0
			}
			return string(rs[1:end]), end + 1
		}
		n := 0
		for n < len(rs) && (rs[n] == '_' || rs[n] >= 'A' && rs[n] <= 'Z' || rs[n] >= 'a' && rs[n] <= 'z' || n > 0 && rs[n] >= '0' && rs[n] <= '9') {
			n++
		}
		return string(rs[:n]), n
	}
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		next := rune(0)
		if i+1 < len(rs) {
			next = rs[i+1]
		}
		switch {
		case c == ' ' || c == '\t':
			endWord()
		case c == '#' && !inWord:
			endWord()
			return toks, nil
		case c == '\'':
			end := strings.IndexRune(string(rs[i+1:]), '\'')
			if end < 0 {
				return nil, errors.New("an unclosed '")
			}
			lit.WriteString(string(rs[i+1 : i+1+end]))
			inWord = true
			i += 1 + end
		case c == '"':
			inWord = true
			closed := false
			for i++; i < len(rs); i++ {
				switch c := rs[i]; {
				case c == '"':
					closed = true
				case c == '\\' && i+1 < len(rs) && strings.ContainsRune("$\"\\`", rs[i+1]):
					lit.WriteRune(rs[i+1])
					i++
					continue
				case c == '$':
					name, n := variable(rs[i+1:])
					if name == "" {
						return nil, errors.New("a $ that is not a variable")
					}
					flushLit()
					cur = append(cur, segment{text: name, variable: true})
					i += n
					continue
				case c == '`':
					return nil, errors.New("` is not understood")
				default:
					lit.WriteRune(c)
					continue
				}
				break
			}
			if !closed {
				return nil, errors.New(`an unclosed "`)
			}
		case c == '\\':
			if next != 0 {
				lit.WriteRune(next)
				i++
			}
			inWord = true
		case c == '$':
			name, n := variable(rs[i+1:])
			if name == "" {
				return nil, errors.New("a $ that is not a variable (command substitution is understood only as NAME=$(...))")
			}
			flushLit()
			cur = append(cur, segment{text: name, variable: true})
			inWord = true
			i += n
		case c == '&' && next == '&':
			op("&&")
			i++
		case c == '&':
			op("&")
		case c == '|' && next == '|':
			return nil, errors.New("|| is not understood")
		case c == '|':
			op("|")
		case c == ';':
			op(";")
		case c == '>' && next == '>':
			return nil, errors.New(">> is not understood")
		case c == '>':
			op(">")
		case c == '<' && next == '<':
			op("<<")
			i++
		case strings.ContainsRune("<()`", c):
			return nil, fmt.Errorf("%c is not understood", c)
		default:
			lit.WriteRune(c)
			inWord = true
		}
	}
	endWord()
	return toks, nil
}
