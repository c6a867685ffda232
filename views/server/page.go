package server

import (
	"bytes"
	"encoding/json"
)

// page collects the JSON of a page's items (entities, changes) within the
// byte budget, and writes the page's JSON without encoding them again.
type page struct {
	items     [][]byte
	size      int // of the items and their commas
	budget    int // for the items
	limit     int
	nextAfter string // "next_after" of the page, when more is set
	more      bool   // the page is full: it has a next page
}

// pageOverhead is what a page's JSON holds besides its items (type, id,
// next_after and punctuation), kept out of the items' budget.
const pageOverhead = 256

func (s *server) newPage(limit int) *page {
	return &page{budget: s.cfg.MaxResponseBytes - pageOverhead, limit: limit}
}

// add encodes v and appends it if the page has fewer than limit items and
// stays within its budget, or is empty: a page holds at least one item,
// however large, so that paging always moves on. It reports whether v
// was appended; if not, the page is full.
func (p *page) add(v any) (bool, error) {
	if len(p.items) >= p.limit {
		return false, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	if len(p.items) > 0 && p.size+1+len(b) > p.budget {
		return false, nil
	}
	p.items = append(p.items, b)
	p.size += len(b) + 1
	return true, nil
}

// body is the page's JSON: head (an object up to the items' key, such as
// `{"entities":`), the items as an array, next_after if set, and a newline,
// as json.Encoder ends a value.
func (p *page) body(head string) []byte {
	var b bytes.Buffer
	b.Grow(len(head) + p.size + 64)
	b.WriteString(head)
	b.WriteByte('[')
	for i, it := range p.items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(it)
	}
	b.WriteByte(']')
	if p.more { // next_after may be "", the text key of an entity
		// JSON, not Go, escapes: a text key may hold control characters.
		next, _ := json.Marshal(p.nextAfter)
		b.WriteString(`,"next_after":`)
		b.Write(next)
	}
	b.WriteString("}\n")
	return b.Bytes()
}
