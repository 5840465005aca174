import { plainText, redactKnown, sourceText, termsOf } from '../../src/requester/source-text';

/** What a source payer writes, as a Task may show it (source-text.ts). */
describe("a source's text", () => {
  it('loses markup and control characters, and is short', () => {
    expect(plainText('<script>alert(1)</script>\u001b[31m\u0000ok\u202e\r\nnext')).toBe('scriptalert(1)/script [31m ok next');
    expect(plainText('x'.repeat(10_000), 50)).toHaveLength(50);
    expect(plainText(undefined)).toBe('');
    expect(plainText({ toString: () => '<b>' })).toBe('b');
  });

  it('has what looks like member data redacted: dates, long numbers, e-mail addresses', () => {
    expect(sourceText('born 1975-05-05 or 05/05/1975, SSN 123-45-6789, phone 555 867 5309, mail a.b@example.com; 3 issues, HTTP 422'))
      .toBe('born [redacted] or [redacted], SSN [redacted], phone [redacted], mail [redacted] 3 issues, HTTP 422');
    expect(sourceText('')).toBe('no detail');
  });

  it("has the member's known names, birth date and identifiers redacted, whole words only", () => {
    const terms = termsOf([{ name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: 'Rivera', given: ['Ann'] }], birthDate: '1975-05-05', gender: 'female' } }, { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', identifier: [{ system: 'http://payer.example/id', value: 'MEM-77' }] } }]);
    expect(terms).toEqual(expect.arrayContaining(['Rivera', 'Ann', '1975-05-05', 'MEM-77']));
    expect(terms).not.toContain('female');
    expect(terms).not.toContain('http://payer.example/id');
    expect(redactKnown('No match for RIVERA, Ann (mem-77): cannot proceed', terms)).toBe('No match for [redacted], [redacted] ([redacted]): cannot proceed');
  });
});
