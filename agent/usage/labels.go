package usage

import "fmt"

// TokenLabels says what identifies a token in the per-token series: a
// token id and a subject tell whoever can scrape /metrics which tokens are
// busy and whose they are, so the default is none.
type TokenLabels string

const (
	// LabelsNone exports no per-token series (the default; "" means it).
	LabelsNone TokenLabels = "none"
	// LabelsID exports the token id only (the subject label is empty).
	LabelsID TokenLabels = "id"
	// LabelsIDSubject exports token id and subject.
	LabelsIDSubject TokenLabels = "id+subject"
)

// ParseTokenLabels accepts none, id and id+subject ("" is none).
func ParseTokenLabels(s string) (TokenLabels, error) {
	switch l := TokenLabels(s); l {
	case "", LabelsNone:
		return LabelsNone, nil
	case LabelsID, LabelsIDSubject:
		return l, nil
	}
	return "", fmt.Errorf("per-token metric labels %q: want %s, %s or %s", s, LabelsNone, LabelsID, LabelsIDSubject)
}

// Subject is what the subject label of a token's series holds under l:
// subject with LabelsIDSubject, "" otherwise.
func (l TokenLabels) Subject(subject string) string {
	if l == LabelsIDSubject {
		return subject
	}
	return ""
}

// PerToken reports whether l exports per-token series at all.
func (l TokenLabels) PerToken() bool { return l == LabelsID || l == LabelsIDSubject }
