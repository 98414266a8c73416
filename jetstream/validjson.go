package jetstream

import "bytes"

// maxJSONDepth is how deeply encoding/json lets arrays and objects nest.
const maxJSONDepth = 10000

// validJSON reports what json.Valid does, in one pass without a call per
// byte: publishing checks every CloudEvent payload, and for a payload of a
// few hundred bytes json.Valid took most of reading its id.
func validJSON(b []byte) bool {
	var buf [32]bool
	objects := buf[:0] // for each array or object open at i: whether an object
	i := skipWS(b, 0)
	for {
		// A value starts at i.
		if i >= len(b) {
			return false
		}
		ok := true
		switch c := b[i]; {
		case c == '{' || c == '[':
			if len(objects) >= maxJSONDepth {
				return false
			}
			object := c == '{'
			i = skipWS(b, i+1)
			if i < len(b) && (b[i] == '}' && object || b[i] == ']' && !object) {
				i++
				break
			}
			objects = append(objects, object)
			if object {
				if i, ok = validKey(b, i); !ok {
					return false
				}
			}
			continue
		case c == '"':
			i, ok = validString(b, i)
		case c == '-' || '0' <= c && c <= '9':
			i, ok = validNumber(b, i)
		case c == 't':
			i, ok = literal(b, i, "true")
		case c == 'f':
			i, ok = literal(b, i, "false")
		case c == 'n':
			i, ok = literal(b, i, "null")
		default:
			return false
		}
		if !ok {
			return false
		}
		// A value ended at i: close what it ends, up to the next value.
		for next := false; !next; {
			i = skipWS(b, i)
			if len(objects) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			object := objects[len(objects)-1]
			switch {
			case b[i] == ',':
				i = skipWS(b, i+1)
				if object {
					if i, ok = validKey(b, i); !ok {
						return false
					}
				}
				next = true
			case b[i] == '}' && object, b[i] == ']' && !object:
				objects = objects[:len(objects)-1]
				i++
			default:
				return false
			}
		}
	}
}

// validKey checks an object's key and its colon at b[i], and returns where
// the value starts.
func validKey(b []byte, i int) (int, bool) {
	i, ok := validString(b, i)
	if !ok {
		return i, false
	}
	i = skipWS(b, i)
	if i >= len(b) || b[i] != ':' {
		return i, false
	}
	return skipWS(b, i+1), true
}

// plainByte marks the bytes that a JSON string holds as they are.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// validString checks the string at b[i] and returns where it ends. As in
// encoding/json, bytes that are not UTF-8 pass.
func validString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	for i++; i < len(b); i++ {
		if plainByte[b[i]] {
			continue
		}
		switch b[i] {
		case '"':
			return i + 1, true
		case '\\':
			i++
			if i >= len(b) {
				return i, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
					return i, false
				}
				i += 4
			default:
				return i, false
			}
		default: // a control character
			return i, false
		}
	}
	return i, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// validNumber checks the number at b[i] and returns where it ends.
func validNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return i, false
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i = digits(b, i+1)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

func digits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// literal checks that b[i:] begins with word.
func literal(b []byte, i int, word string) (int, bool) {
	if !bytes.HasPrefix(b[i:], []byte(word)) {
		return i, false
	}
	return i + len(word), true
}
