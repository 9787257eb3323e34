package policy

import "regexp"

// candidatePattern finds strings shaped like tokenwarden tokens: the tw_
// prefix and three base64url segments, the first starting like a JWS header
// (`{"` encodes as eyJ). Secret scanners can use the same expression.
var candidatePattern = regexp.MustCompile(CandidatePattern)

// CandidatePattern is the regular expression secret scanners can use to
// find tokenwarden tokens. A match is only a candidate: KeySet.
// VerifySignature confirms it.
const CandidatePattern = `tw_eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}`

// Candidate is a token-shaped string found in data, at byte offset Offset.
type Candidate struct {
	Offset int
	Text   string
}

// FindCandidates returns every token-shaped string in data, longest first
// at each position, at most limit of them (0: no limit).
func FindCandidates(data []byte, limit int) []Candidate {
	n := -1
	if limit > 0 {
		n = limit
	}
	var out []Candidate
	for _, loc := range candidatePattern.FindAllIndex(data, n) {
		end := loc[1]
		if end-loc[0] > MaxTokenBytes {
			continue
		}
		out = append(out, Candidate{Offset: loc[0], Text: string(data[loc[0]:end])})
	}
	return out
}
