package codecs

import "testing"

// FuzzCanonicalParts: canonicalParts accepts exactly what decodeParts does,
// and isCanonicalUUID what canonicalUUID leaves as it is.
func FuzzCanonicalParts(f *testing.F) {
	for _, s := range []string{`["a","b"]`, `[]`, `["a"]`, `["\u0001","\b"]`, `["\u0008"]`, `["\u001f\u00e9"]`, `[ "a"]`, `["a",]`, `["\/"]`, "[\"\xff\"]", `["é","<"]`, `["a\"b","\\"]`, `["\u001F"]`, `null`, `["",""]`,
		"0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70", "0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70", "0b6f3d6e1c2a4f6b9a512f3c4d5e6f70", "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f7g"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := canonicalParts(s)
		parts, err := decodeParts(s)
		if ok != (err == nil) || (ok && n != len(parts)) {
			t.Fatalf("canonicalParts(%q) = %d, %v; decodeParts: %q, %v", s, n, ok, parts, err)
		}
		c, ok := canonicalUUID(s)
		if isCanonicalUUID(s) != (ok && c == s) {
			t.Fatalf("isCanonicalUUID(%q) = %v; canonicalUUID: %q, %v", s, isCanonicalUUID(s), c, ok)
		}
	})
}
